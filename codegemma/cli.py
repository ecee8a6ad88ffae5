"""The `codegemma` command: `info` and `bench decode`/`bench speculative` here; other subcommands
(`lsp`, `serve`, `eval`, more benches) are plugins registered by the packages above the core under the
entry-point groups "codegemma.commands" and "codegemma.bench", so the core never imports them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from codegemma.errors import CodegemmaError

Main = Callable[[list[str] | None], int]


def _plugins(group: str) -> dict[str, Main]:
    return {ep.name: ep.load for ep in entry_points(group=group)}


def _builtin_bench() -> dict[str, Main]:
    from codegemma.bench.decode import main as decode
    from codegemma.bench.speculative import main as speculative

    return {"decode": decode, "speculative": speculative}


def info_main(argv: list[str] | None = None) -> int:
    from codegemma.info import describe

    ap = argparse.ArgumentParser(prog="codegemma info", description="Module tree and parameter counts of a "
                                 "preset or checkpoint, built on the meta device (no weights are loaded).")
    ap.add_argument("model", help="a preset name (codegemma-2b, gemma-2-9b, ...) or a checkpoint path")
    args = ap.parse_args(argv)
    print(describe(args.model))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands: dict[str, Callable[[], Main]] = {"info": lambda: info_main, **_plugins("codegemma.commands")}
    usage = f"usage: codegemma {{{','.join(sorted([*commands, 'bench']))}}} ..."
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    try:
        if name == "bench":
            benches: dict[str, Callable[[], Main]] = {**{k: (lambda f=f: f) for k, f in _builtin_bench().items()},
                                                      **_plugins("codegemma.bench")}
            if not rest or rest[0] not in benches:
                print(f"usage: codegemma bench {{{','.join(sorted(benches))}}} ...", file=sys.stderr)
                return 2
            return benches[rest[0]]()(rest[1:])
        if name not in commands:
            print(f"codegemma: unknown command {name!r}\n{usage}", file=sys.stderr)
            return 2
        return commands[name]()(rest)
    except CodegemmaError as e:
        print(f"codegemma: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
