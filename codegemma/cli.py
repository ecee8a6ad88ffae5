"""The `codegemma` command: one table below names the function that runs each subcommand and bench."""

from __future__ import annotations

import sys
from importlib import import_module

from codegemma.errors import CodegemmaError

# Targets are "module:function" strings imported only when their subcommand runs: lsp/, fim/ and eval/ import
# the core, so the core must not import them when it loads (the layering lsp/eval -> fim -> codegemma holds,
# and `codegemma info` does not pay for pygls or FastAPI).
COMMANDS: dict[str, str] = {
    "info": "codegemma.info:main",
    "lsp": "lsp.cli:main",
    "serve": "fim.http.cli:main",
    "eval": "eval.cli:main",
    "train-fim": "codegemma.adapter.train:main",
}
BENCHES: dict[str, str] = {
    "decode": "codegemma.bench.decode:main",
    "speculative": "codegemma.bench.speculative:main",
    "completion": "eval.bench:main",
    "lsp": "lsp.bench:main",
    "remote": "eval.remote_agreement:main",
    "http": "fim.http.loadtest:main",
}


def _run(target: str, argv: list[str]) -> int:
    module, function = target.split(":")
    return getattr(import_module(module), function)(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: codegemma {{{','.join(sorted([*COMMANDS, 'bench']))}}} ..."
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    try:
        if name == "bench":
            if not rest or rest[0] not in BENCHES:
                print(f"usage: codegemma bench {{{','.join(sorted(BENCHES))}}} ...", file=sys.stderr)
                return 2
            return _run(BENCHES[rest[0]], rest[1:])
        if name not in COMMANDS:
            print(f"codegemma: unknown command {name!r}\n{usage}", file=sys.stderr)
            return 2
        return _run(COMMANDS[name], rest)
    except CodegemmaError as e:
        print(f"codegemma: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
