"""Errors of the eval harness: each carries a one-line message meant for the user."""


class EvalError(Exception):
    """Base class; the CLI prints `str(error)` and exits with status 2."""


class DatasetError(EvalError):
    """A benchmark name, data directory or data file that cannot be used."""


class SandboxError(EvalError):
    """The sandbox could not start a sample (not a failing sample: that is a result)."""


class ResultsError(EvalError):
    """A results or samples file that cannot be read or does not match the run."""
