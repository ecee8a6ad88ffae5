"""What `codegemma eval` and `codegemma bench completion` share around a run: loading the model, progress."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from tqdm import tqdm

from codegemma import EngineProtocol
from fim import FimError
from fim.engine import load_engine as load

from eval.errors import EvalError


def load_engine(model: str | None, dtype: str | None = None, int8: bool = False,
                quant: str | None = None, adapter: str | None = None) -> EngineProtocol:
    """The engine for `model` (None = the embedded default); a load failure becomes a one-line EvalError."""
    try:
        return load(model, dtype=dtype, int8=int8, quant=quant, adapter=adapter)
    except FimError as error:
        raise EvalError(f"cannot load the model: {error}") from None


@contextmanager
def progress_bar(total: int, label: str = "eval") -> Iterator[Callable[[dict], None]]:
    """A tqdm bar on stderr with the running pass rate; yields the callback each finished record goes to."""
    passed = [0, 0]
    with tqdm(total=total, desc=label, unit="sample", file=sys.stderr, dynamic_ncols=True) as bar:
        def on_record(record: dict) -> None:
            passed[0] += bool(record["passed"])
            passed[1] += 1
            bar.set_postfix_str(f"pass {passed[0]}/{passed[1]} ({passed[0] / passed[1]:.1%})", refresh=False)
            bar.update(1)

        yield on_record
