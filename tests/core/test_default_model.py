"""The embedded default model (Gemma 3 270M, Q4_K_M GGUF from PyPI): it loads with no arguments and fast when
warm, decodes exactly as transformers does from the same GGUF file, and scores real code as likely."""

from __future__ import annotations

import math
import random
import time

import pytest
import torch

import codegemma
from codegemma import GenerateOptions
from codegemma.config import preset, to_hf_config
from codegemma.loader import default_gguf

pytestmark = pytest.mark.slow

PROMPTS = {
    "python": 'import os\n\n\ndef list_python_files(root):\n    """Return the paths of the .py files under root."""\n',
    "javascript": "function debounce(fn, ms) {\n  let timer;\n  return function (...args) {\n",
    "c": "#include <stdio.h>\n\n/* Print the first n Fibonacci numbers. */\nvoid fib(int n) {\n    int a = 0;\n",
}
STEPS = 64

CODE = '''def binary_search(items, target):
    """Return the index of target in the sorted list items, or -1 if it is absent."""
    lo, hi = 0, len(items) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1
'''


@pytest.fixture(scope="module")
def engine() -> codegemma.Engine:
    return codegemma.load(adapter="off")  # the base model as the GGUF has it (the FIM adapter: test_adapter.py)


@pytest.fixture(scope="module")
def engine_fp32() -> codegemma.Engine:
    return codegemma.load(dtype="fp32", adapter="off")


@pytest.fixture(scope="module")
def transformers_model():
    """transformers' Gemma3ForCausalLM holding the weights transformers' own GGUF reader (the one
    `from_pretrained(gguf_file=...)` uses) takes from the same file."""
    transformers = pytest.importorskip("transformers")
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.for_model(**to_hf_config(preset("gemma-3-270m")))
    with torch.device("meta"):  # only its parameter names are needed, to map the GGUF names onto
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(default_gguf()), return_tensors=True, model_to_load=skeleton)["tensors"]
    with no_init_weights():  # every weight is overwritten below; random initialisation would cost seconds
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()},
                                   strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys  # tied to the embedding
    model.tie_weights()  # skipped by no_init_weights along with the initialisation
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied, "transformers' output layer is not tied to the embedding"
    return model.eval()


def transformers_choices(model, prompt: list[int], continuation: list[int]) -> list[int]:
    """transformers' greedy choice at every step of `continuation`, from one forward pass over prompt +
    continuation. The sequences of two greedy decoders are identical exactly when each picks the same next
    token after the same prefix, so this checks step-by-step equality at the cost of one pass."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + continuation[:-1]])).logits[0, len(prompt) - 1:]
    return logits.argmax(-1).tolist()


def test_default_has_fim_exactly_when_its_adapter_ships():
    from codegemma.adapter.lora import DEFAULT_ADAPTER

    engine = codegemma.load()
    assert engine.supports_fim == DEFAULT_ADAPTER.is_file()
    assert engine.tokenizer.fim_order == "spm" or not engine.supports_fim


def test_base_loads_without_fim(engine):
    assert "gemma-3-270m" in engine.name
    assert not engine.supports_fim
    tok = engine.tokenizer
    assert (tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id) == (None, None, None)
    assert tok.vocab_size == engine.config.vocab_size == 262144
    gen = engine.generate(tok.encode(PROMPTS["python"], bos=True), GenerateOptions(max_new_tokens=8))
    assert gen.tokens and gen.text


def test_warm_load_is_fast(engine):
    """The module fixture above did the first load (and built the on-disk cache if needed); a second load
    memory-maps the cache and builds the tokenizer from its cached SentencePiece model."""
    start = time.perf_counter()
    again = codegemma.load(adapter="off")
    seconds = time.perf_counter() - start
    print(f"warm load of the default model: {seconds:.2f} s")
    assert again.name == engine.name
    assert seconds < 10  # well under 3 s on an idle machine; loose for shared CI runners
    del again


@pytest.mark.parametrize("language", sorted(PROMPTS))
def test_greedy_tokens_equal_transformers(engine_fp32, transformers_model, language):
    ids = engine_fp32.tokenizer.encode(PROMPTS[language], bos=True)
    ours = engine_fp32.generate(ids, GenerateOptions(max_new_tokens=STEPS, stop_ids=frozenset())).tokens
    assert len(ours) == STEPS
    reference = transformers_choices(transformers_model, ids, ours)
    first = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), None)
    assert first is None, (f"{language}: at step {first} transformers picks {reference[first]}, we picked "
                           f"{ours[first]}, after {engine_fp32.tokenizer.decode(ours[:first])!r}")


@pytest.mark.parametrize("language", sorted(PROMPTS))
def test_native_formats_decode_as_the_dequantized_float32_reference(engine, engine_fp32, language):
    """The default path computes with the file's own blocks (Q8_0, Q5_0, Q4_K, Q6_K); its greedy tokens are
    the float32 copy's choices at every step. A divergence is reported with the reference's margin there."""
    assert {"Q8_0", "Q5_0", "Q4_K", "Q6_K"} <= set(engine.formats()) and "BF16" not in engine.formats()
    ids = engine.tokenizer.encode(PROMPTS[language], bos=True)
    ours = engine.generate(ids, GenerateOptions(max_new_tokens=STEPS, stop_ids=frozenset())).tokens
    with torch.inference_mode():
        logits = engine_fp32.model(torch.tensor([ids + ours[:-1]]), torch.arange(len(ids) + STEPS - 1))[0, len(ids) - 1:]
    reference = logits.argmax(-1).tolist()
    first = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), None)
    margin = None if first is None else float(logits[first].topk(2).values.diff().abs())
    assert first is None, f"{language}: diverges at step {first}, where the reference's top two differ by {margin}"


def perplexity(engine: codegemma.Engine, text: str) -> float:
    scores = engine.score(text)
    assert len(scores) == len(engine.tokenizer.encode(text))  # every token after <bos> is scored
    assert all(lp <= 0.0 for _, lp in scores)
    return math.exp(-sum(lp for _, lp in scores) / len(scores))


def test_score_finds_real_code_likely(engine):
    words = CODE.split(" ")
    random.Random(0).shuffle(words)
    shuffled = " ".join(words)
    real, scrambled = perplexity(engine, CODE), perplexity(engine, shuffled)
    print(f"perplexity: real code {real:.2f}, its words shuffled {scrambled:.2f}")
    assert real < 50
    assert scrambled > 3 * real
