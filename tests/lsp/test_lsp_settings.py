"""Settings from initializationOptions / didChangeConfiguration: valid keys apply, the rest is reported."""

from lsp.settings import Settings, apply_settings


def test_valid_settings_apply_including_nested_codegemma_section():
    settings, problems = apply_settings(Settings(), {"codegemma": {
        "model": "/models/cg", "maxTokens": 32, "temperature": 0.2, "debounceMs": 0, "context": False,
        "languages": {"markdown": False, "*": True}, "speculative": False, "reusePrompt": False}})
    assert problems == []
    assert settings == Settings(model="/models/cg", max_tokens=32, temperature=0.2, debounce_ms=0, context=False,
                                languages={"markdown": False, "*": True}, speculative=False, reuse_prompt=False)
    assert not settings.enabled_for("markdown") and settings.enabled_for("python")


def test_unknown_and_invalid_settings_are_reported_and_ignored():
    base = Settings(max_tokens=16)
    settings, problems = apply_settings(base, {"maxTokens": "many", "temperature": -1, "colour": "red",
                                               "context": 1, "languages": ["python"], "debounceMs": 40})
    assert settings == Settings(max_tokens=16, debounce_ms=40)
    assert len(problems) == 5
    assert "setting 'maxTokens' = 'many' ignored: expected an integer from 1 to 2048" in problems
    assert any(p.startswith("unknown setting 'colour' ignored") for p in problems)


def test_non_object_payload_and_none():
    assert apply_settings(Settings(), None) == (Settings(), [])
    settings, problems = apply_settings(Settings(), [1, 2])
    assert settings == Settings() and problems == ["settings must be an object, got list: ignored"]
    # What Neovim sends for an empty Lua table, as initializationOptions and as workspace settings
    assert apply_settings(Settings(), []) == (Settings(), [])
    assert apply_settings(Settings(), {"codegemma": []}) == (Settings(), [])


def test_languages_default_switch():
    settings, _ = apply_settings(Settings(), {"languages": {"*": False, "python": True}})
    assert settings.enabled_for("python") and not settings.enabled_for("go")


def test_speculative_may_be_left_to_the_engine():
    settings, problems = apply_settings(Settings(speculative=True), {"speculative": None})
    assert problems == [] and settings.speculative is None
    settings, problems = apply_settings(Settings(), {"speculative": "yes"})
    assert settings.speculative is None
    assert problems == ["setting 'speculative' = 'yes' ignored: expected true, false, or null for the engine's choice"]


def test_rerank_settings_reach_the_completion_options():
    from lsp.completer import Snapshot, request

    settings, problems = apply_settings(Settings(), {"rerank": True, "candidates": 3, "rerankBudgetMs": 800})
    assert problems == [] and (settings.rerank, settings.candidates, settings.rerank_budget_ms) == (True, 3, 800)
    snap = Snapshot("x = ", 4, 0, 4, 4, "")
    options = request(snap, "a.py", "python", [], settings, "a.py").options
    assert (options.candidates, options.rerank_budget_ms, options.rerank_lines) == (3, 800, True)
    off = request(snap, "a.py", "python", [], Settings(candidates=3), "a.py").options
    # candidates alone do not switch reranking on
    assert (off.candidates, off.rerank_budget_ms, off.rerank_lines) == (1, None, False)
    settings, _ = apply_settings(settings, {"rerankLines": False})
    assert not request(snap, "a.py", "python", [], settings, "a.py").options.rerank_lines
    _, problems = apply_settings(Settings(), {"candidates": 0, "rerank": "yes", "rerankBudgetMs": -5})
    assert len(problems) == 3 and "expected an integer from 1 to 16" in problems[0]
