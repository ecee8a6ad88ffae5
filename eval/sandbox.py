"""Execution sandbox for model-written code: one confined process per sample, run by parallel workers.

Each sample runs as `python -I eval/sandbox_child.py` in its own temporary directory, in its own session
and process group, with a scrubbed environment, rlimits on CPU time, address space, processes and file
size, a cgroup bounding the whole sample's memory and processes (root, cgroup v2 or v1, where writable),
and a wall-clock limit after which the whole process group is killed (it is killed at the end in any
case). The child (see `eval/sandbox_child.py`) adds the rest:

- isolation "namespaces" (chosen by "auto" when a probe run succeeds): as root, or as any user through a
  user namespace where the kernel allows unprivileged ones. No network (a fresh network namespace), every
  mount read-only, one tmpfs with size and inode limits for the work directory, /tmp, /var/tmp, /dev/shm
  and /run (host Unix sockets there are hidden), a fresh /proc, the program as PID 1 of its own PID
  namespace (every process it starts dies with it), an unprivileged uid per worker (root) or no
  capabilities (user namespace), and a seccomp filter (no sockets, mounts, namespaces, ptrace or pidfds).
- isolation "guard": the rlimits, the scrubbed environment, the process group, a seccomp filter that also
  forbids new processes and signals to other processes, and the audit hook guard, which refuses writes
  outside the work directory from Python code only: native code could get past it. "auto" never falls
  back to it: it has to be asked for with isolation="guard" (`--isolation guard`), and says so on stderr.

A sample passes only if the child wrote the per-run nonce, which it does only after the program
(code + tests + check call) returned normally, with references it took before the program ran.
Threat model: accidents and simple cheats are stopped; a program written to read the harness's own memory
could forge a pass (never escape), since the tests run in the program's process (see the child).
"""

from __future__ import annotations

import json
import math
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from eval.errors import SandboxError

CHILD = Path(__file__).with_name("sandbox_child.py")
ISOLATIONS = ("auto", "namespaces", "guard")
BASE_UID = 61000  # worker k runs as uid BASE_UID + k in "namespaces" mode (no name needed in /etc/passwd)
TAIL_BYTES = 4096
EXIT_EARLY = 3
PROBE_PROGRAM = "import json, decimal, fractions\nassert fractions.Fraction(1, 3) * 3 == 1\n"
GUARD_WARNING = ("WARNING: sandbox isolation is 'guard' only: resource limits, seccomp and a Python audit "
                 "hook, not a security boundary (native code can write outside the work directory)\n")
CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


@dataclass(frozen=True)
class Limits:
    """Per-sample limits (the wall clock also bounds a sample that sleeps; CPU time one that spins)."""

    timeout_s: float = 10.0
    memory_mb: int = 1024  # per process (address space) and, with a cgroup, for the whole sample
    nproc: int = 64
    fsize_mb: int = 16
    disk_mb: int = 64  # all the sample's files together (namespaces: its tmpfs)
    inodes: int = 4096


@dataclass(frozen=True)
class Outcome:
    """What running one sample gave: `result` is "passed", "timed out" or "failed: <why>"."""

    passed: bool
    result: str
    duration_s: float
    exit_status: int | None
    stdout: str  # last few KiB, nonce removed
    stderr: str  # last few KiB


class Sandbox:
    """Runs programs in confined child processes, `workers` at a time."""

    def __init__(self, limits: Limits = Limits(), workers: int | None = None, isolation: str = "auto",
                 guard: bool = True, root: Path | None = None) -> None:
        if isolation not in ISOLATIONS:
            raise SandboxError(f"unknown isolation {isolation!r}: use one of {', '.join(ISOLATIONS)}")
        self.limits = limits
        self.guard = guard
        self.root = root  # where the per-sample directories go (None = the system temp dir)
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            self._slots.put(slot)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        self._cgroup_parents = _Cgroup.parents()
        self.cgroup = self._cgroup_parents[0][0] if self._cgroup_parents else None  # "v2", "v1" or None
        self.isolation = self._choose(isolation)

    def _choose(self, isolation: str) -> str:
        if isolation == "guard":
            sys.stderr.write(GUARD_WARNING)
            return "guard"
        reason = ""
        if not sys.platform.startswith("linux"):
            reason = "needs Linux"
        else:
            probe = self._run(PROBE_PROGRAM, "namespaces", Limits(timeout_s=10.0))
            if not probe.passed:
                reason = (probe.stderr.strip().splitlines() or [probe.result])[-1]
        if reason:
            raise SandboxError(f"namespace isolation is not available here ({reason}); only the audit-hook "
                               "guard is left, which is not a security boundary: pass --isolation guard "
                               "(isolation='guard') to accept it")
        return "namespaces"

    def run(self, program: str) -> Outcome:
        """Run one program now, in the calling thread (still one confined child process)."""
        return self._run(program, self.isolation, self.limits)

    def submit(self, program: str) -> Future[Outcome]:
        """Run a program on a worker; the future gives its Outcome."""
        return self._pool.submit(self.run, program)

    def map(self, programs: list[str]) -> list[Outcome]:
        """Outcomes of many programs, in their order, run in parallel."""
        return [future.result() for future in [self.submit(p) for p in programs]]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, program: str, isolation: str, limits: Limits) -> Outcome:
        slot = self._slots.get()
        run_dir = Path(tempfile.mkdtemp(prefix="codegemma-sample-", dir=self.root))
        try:
            return self._execute(program, isolation, limits, slot, run_dir)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
            self._slots.put(slot)

    def _execute(self, program: str, isolation: str, limits: Limits, slot: int, run_dir: Path) -> Outcome:
        work = run_dir / "work"
        work.mkdir()
        uid = BASE_UID + slot
        if isolation == "namespaces" and os.geteuid() == 0:
            os.chmod(run_dir, 0o711)
            os.chown(work, uid, uid)
        nonce = secrets.token_hex(16)
        job = {
            "nonce": nonce, "program": program, "workdir": str(work), "isolate": isolation == "namespaces",
            "uid": uid, "guard": self.guard, "seccomp": True,
            "expose": sorted({sys.prefix, sys.base_prefix, sys.exec_prefix}),
            "limits": {"cpu_s": max(1, math.ceil(limits.timeout_s)), "memory_mb": limits.memory_mb,
                       "nproc": limits.nproc, "fsize_mb": limits.fsize_mb, "disk_mb": limits.disk_mb,
                       "inodes": limits.inodes},
        }
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
        cgroup = _Cgroup.create(self._cgroup_parents, f"codegemma-{os.getpid()}-{slot}-{run_dir.name}", limits)
        started = time.monotonic()
        with open(run_dir / "stdout", "wb+") as out, open(run_dir / "stderr", "wb+") as err:
            try:
                process = subprocess.Popen(
                    [sys.executable, "-I", str(CHILD)], stdin=subprocess.PIPE, stdout=out, stderr=err,
                    cwd=work, env=env, start_new_session=True,
                )
            except OSError as error:
                if cgroup:
                    cgroup.remove()
                raise SandboxError(f"cannot start a sandbox process: {error}") from None
            if cgroup:
                cgroup.add(process.pid)  # before the job is written: the child waits for it, so forks nothing yet
            timed_out = _feed_and_wait(process, json.dumps(job).encode(), limits.timeout_s)
            _kill_group(process.pid)
            if cgroup:
                cgroup.remove()
            duration = time.monotonic() - started
            stdout, stderr = _tail(out), _tail(err)
        status = process.returncode
        passed = not timed_out and status == 0 and f"\n{nonce}\n" in stdout
        stdout = stdout.replace(f"\n{nonce}\n", "")
        return Outcome(passed, _result(passed, timed_out, status, stderr), duration, status, stdout, stderr)


class _Cgroup:
    """One cgroup per sample (v2, or the v1 memory and pids controllers) bounding its memory and processes."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs

    @staticmethod
    def parents() -> list[tuple[str, Path]]:
        """Where this process may create sample cgroups: [("v2", dir)] or [("v1", memory), ("v1", pids)]."""
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            return []
        own = {controller: path for _, controllers, path in (line.split(":", 2) for line in lines)
               for controller in controllers.split(",")}
        for root in CGROUP_ROOTS:
            parent = root / own.get("", "/").lstrip("/")
            enabled = _read(parent / "cgroup.subtree_control").split()
            if "" in own and {"memory", "pids"} <= set(enabled) and os.access(parent, os.W_OK):
                return [("v2", parent)]
        found = [("v1", CGROUP_ROOTS[0] / name / own[name].lstrip("/")) for name in ("memory", "pids") if name in own]
        return found if len(found) == 2 and all(os.access(path, os.W_OK) for _, path in found) else []

    @classmethod
    def create(cls, parents: list[tuple[str, Path]], name: str, limits: Limits) -> _Cgroup | None:
        memory = str(limits.memory_mb * 1024 * 1024)
        settings = {"v2": {"memory.max": memory, "memory.swap.max": "0", "pids.max": str(limits.nproc)},
                    "v1": {"memory.limit_in_bytes": memory, "memory.memsw.limit_in_bytes": memory,
                           "pids.max": str(limits.nproc)}}
        group = cls([])
        try:
            for version, parent in parents:
                path = parent / name
                path.mkdir()
                group.dirs.append(path)
                for key, value in settings[version].items():
                    if (path / key).exists():
                        (path / key).write_text(value)
        except OSError:
            group.remove()
            return None
        return group if group.dirs else None

    def add(self, pid: int) -> None:
        for path in self.dirs:
            (path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        for path in self.dirs:
            for _ in range(50):  # killed processes leave the cgroup within milliseconds
                for pid in _read(path / "cgroup.procs").split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _feed_and_wait(process: subprocess.Popen, job: bytes, timeout_s: float) -> bool:
    """Write the job to the child's stdin and wait; True if the wall-clock limit ran out."""
    deadline = time.monotonic() + timeout_s
    try:
        process.stdin.write(job)
        process.stdin.close()
    except (BrokenPipeError, OSError):
        pass  # the child died before reading its job; its status says why
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
        return False
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        process.wait()
        return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def _tail(handle) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - TAIL_BYTES))
    return handle.read().decode("utf-8", errors="replace")


def _result(passed: bool, timed_out: bool, status: int | None, stderr: str) -> str:
    """A short reason in the style of the official checker ("passed", "timed out", "failed: ...")."""
    if passed:
        return "passed"
    if timed_out:
        return "timed out"
    last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
    if status is not None and status < 0:
        name = signal.Signals(-status).name
        why = {"SIGXCPU": "CPU time limit", "SIGKILL": "killed", "SIGXFSZ": "file size limit"}.get(name, name)
        return f"failed: {why} ({name})"
    if status == EXIT_EARLY:
        return f"failed: {last}"
    if status in (0, None) or not last:
        return f"failed: exited before the tests finished (status {status})"
    return f"failed: {last}"

