"""Runs programs in an `eval.sandbox.Sandbox` and prints their outcomes as one JSON list.

The hostile-sample tests start it as an unprivileged user (see `unprivileged_command`) to try the sandbox as
a user on a laptop gets it: the job comes on stdin as {"programs", "isolation", "guard", "root", "limits"}.
"""

import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eval.sandbox import Limits, Sandbox  # noqa: E402

CLOSED_HELPER = """set -e
stash=$(mktemp -d)
mount --bind "$1/$2" "$stash"
mount -t tmpfs -o mode=755,size=1m tmpfs "$1"
mkdir "$1/$2"
mount --move "$stash" "$1/$2"
shift 2
exec "$@"
"""


def unprivileged_command(uid: int = 65534) -> list[str]:
    """This script run as `uid` with no capabilities; an interpreter under a closed directory (/root/.pyenv)
    is made reachable in a private mount namespace by covering that directory with one showing only it."""
    command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
               "--bounding-set=-all", sys.executable, __file__]
    parts = os.path.realpath(sys.base_prefix).split(os.sep)
    for depth in range(2, len(parts)):
        closed = os.sep.join(parts[:depth])
        if os.stat(closed).st_mode & 0o001 == 0:
            return ["unshare", "--mount", "--propagation", "private", "sh", "-c", CLOSED_HELPER, "sh",
                    closed, parts[depth], *command]
    return command


def main() -> None:
    job = json.loads(sys.stdin.read())
    with Sandbox(Limits(**job["limits"]), workers=2, isolation=job["isolation"], guard=job["guard"],
                 root=Path(job["root"])) as box:
        outcomes = box.map(job["programs"])
        print(json.dumps({"isolation": box.isolation, "cgroup": box.cgroup, "uid": os.getuid(),
                          "outcomes": [dataclasses.asdict(o) for o in outcomes]}))


if __name__ == "__main__":
    main()
