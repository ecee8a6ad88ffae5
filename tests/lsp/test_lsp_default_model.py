"""One end-to-end run with the real default model (slow: loads the embedded GGUF)."""

import pytest

from tests.lsp.harness import inline, opened, pos, start


@pytest.mark.slow
def test_default_model_completes_a_function_body():
    client = start(model=None, options={"maxTokens": 16, "debounceMs": 0})
    try:
        text = "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return "
        with opened(client, text):
            result = inline(client, pos(2, 11)).result(timeout=300)
        (item,) = result["items"]
        assert item["range"] == {"start": pos(2, 11), "end": pos(2, 11)}
        assert "a" in item["insertText"] and "b" in item["insertText"]
    finally:
        assert client.close() == 0
