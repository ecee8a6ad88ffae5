"""CodeGemma model core: Gemma-family models on CPU (and GPU), FIM-aware tokenizer, fast generation.

    engine = codegemma.load()              # the embedded Gemma 3 270M
    ids = engine.tokenizer.encode("def add(a, b):", bos=True)
    print(engine.generate(ids, codegemma.GenerateOptions(max_new_tokens=32)).text)
"""

from codegemma.config import PRESETS, GemmaConfig
from codegemma.contract import EngineProtocol, GenerateOptions, ScoringEngine
from codegemma.engine import Engine
from codegemma.errors import (CheckpointError, CodegemmaError, ModelNotFoundError, PromptTooLongError,
                              TokenizerError, UnknownPresetError)
from codegemma.generate import GenStats, Generation
from codegemma.loader import load

__all__ = ["PRESETS", "GemmaConfig", "Engine", "EngineProtocol", "GenerateOptions", "ScoringEngine", "GenStats",
           "Generation", "load",
           "CodegemmaError", "CheckpointError", "ModelNotFoundError", "PromptTooLongError", "TokenizerError", "UnknownPresetError"]
