"""User-facing errors of the model core: one type per kind, each with a one-line message.

The edges (CLI, HTTP, LSP) catch `CodegemmaError` and show `str(error)`; anything else is a bug.
"""


class CodegemmaError(Exception):
    """Base of every error the model core reports to a user."""


class ModelNotFoundError(CodegemmaError):
    """The model path does not exist or is not a checkpoint."""


class CheckpointError(CodegemmaError):
    """A checkpoint exists but is corrupt, truncated, or does not match its config."""


class UnknownPresetError(CodegemmaError):
    """A preset name that is not in `codegemma.config.PRESETS`."""


class PromptTooLongError(CodegemmaError):
    """Prompt plus requested tokens exceed the model's context."""


class TokenizerError(CodegemmaError):
    """Text or ids the tokenizer cannot handle (ids outside the vocabulary, a broken tokenizer file)."""
