"""The sandbox's child side: confine this process, run one untrusted program, prove it ran to its end.

Started by `eval.sandbox` as `python -I sandbox_child.py` with a JSON job on stdin (never on the command
line or in the environment, where the program could read it). Only the standard library is used, so the
child imports nothing from the project.

Steps:
1. Read the job, point stdin at /dev/null, enter the work directory.
2. "namespaces" isolation (root only): new network, mount, PID and IPC namespaces; every mount read-only
   except the work directory; then fork, so the program is PID 1 of its namespace and every process it
   starts dies with it; the program's process switches to an unprivileged uid and asks to be killed if
   this process dies.
3. Resource limits: CPU seconds, address space, processes, file size, open files, no core dumps.
4. The guard (optional, on by default): a Python audit hook that refuses sockets, new processes, signals
   to other processes, writes outside the work directory, other processes' /proc entries, ctypes, gc
   object walks and tracing. It is defence in depth inside the interpreter, not a security boundary:
   native code could get past it; the namespaces are the boundary.
5. Run the program; only if it returns normally print the per-run nonce (given by the parent, held in a
   local variable here) on stdout. An `exit()` in the program, an exception, a signal or a dead parent
   all end the process without the nonce, so the sample does not pass. The nonce guards against programs
   that stop early, not against one written to read this interpreter's frames (namedtuple and typing need
   `sys._getframe`, so frames stay readable): that would be a forged pass, never an escape.

Exit status: 0 ran to its end, 1 raised an exception, 3 called exit() early, 2 the sandbox failed.
"""

import json
import os
import re
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_PDEATHSIG = 1
# Mount options that a read-only bind remount must keep (the kernel refuses to drop locked ones).
KEPT_MOUNT_FLAGS = {
    "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME,
}

EXIT_PASSED, EXIT_RAISED, EXIT_SANDBOX, EXIT_EARLY = 0, 1, 2, 3

BLOCKED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen",
    "os.kill", "os.killpg", "signal.pthread_kill",
    "sys.settrace", "sys.setprofile",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.sendto", "socket.sendmsg",
})
BLOCKED_PREFIXES = ("ctypes.", "socket.")
BLOCKED_IMPORTS = frozenset({"_posixsubprocess", "_ctypes", "ctypes", "_socket", "socket", "subprocess"})
# Events whose first argument is a path the call creates, changes or removes.
PATH_EVENTS = frozenset({
    "os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.chown", "os.symlink", "os.link",
    "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr", "shutil.rmtree",
})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class SetupError(Exception):
    """The sandbox could not be set up; reported on stderr with exit status 2."""


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    nonce = job["nonce"].encode()
    try:
        workdir = os.path.realpath(job["workdir"])
        os.chdir(workdir)
        if job["isolate"]:
            _isolate(workdir, job["expose"], job["uid"])
        _limit(job["limits"])
    except (OSError, SetupError) as error:
        sys.stderr.write(f"sandbox: {error}\n")
        os._exit(EXIT_SANDBOX)
    if job["guard"]:
        sys.addaudithook(_guard(workdir))
    try:
        exec(compile(job.pop("program"), "program.py", "exec"), {})  # a fresh namespace, as the official human-eval checker runs it
    except SystemExit as stop:
        sys.stderr.write(f"program called exit({stop.code!r}) before the tests finished\n")
        os._exit(EXIT_EARLY)
    except BaseException:  # the program's own failure (AssertionError, MemoryError, ...): that is the result
        sys.__excepthook__(*sys.exc_info())  # the original hook: the program may have replaced sys.excepthook
        sys.stderr.flush()
        os._exit(EXIT_RAISED)
    sys.stdout.flush()
    os.write(1, b"\n" + nonce + b"\n")
    os._exit(EXIT_PASSED)


def _isolate(workdir: str, expose: list[str], uid: int) -> None:
    import ctypes  # only here: in guard-only mode the program should not find ctypes already imported

    libc = ctypes.CDLL(None, use_errno=True)

    def call(result: int, what: str) -> None:
        if result != 0:
            raise SetupError(f"{what}: {os.strerror(ctypes.get_errno())}")

    stand_ins = _stand_ins(expose, os.path.dirname(workdir))
    call(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
    call(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    for original, inner, blocked in stand_ins:
        call(libc.mount(original.encode(), inner.encode(), None, MS_BIND | MS_REC, None), f"bind {original}")
        call(libc.mount(os.path.dirname(inner).encode(), blocked.encode(), None, MS_BIND | MS_REC, None),
             f"cover {blocked}")
    call(libc.mount(workdir.encode(), workdir.encode(), None, MS_BIND | MS_REC, None), "bind the work directory")
    with open("/proc/self/mountinfo") as handle:
        mounts = [line.split() for line in handle]
    for fields in mounts:
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # mountinfo escapes
        if point == workdir:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in fields[5].split(","):
            flags |= KEPT_MOUNT_FLAGS.get(option, 0)
        call(libc.mount(None, point.encode(), None, flags, None), f"make {point} read-only")
    os.chdir(workdir)  # the old working directory is the directory under the bind mount, now read-only
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        _relay(pid)
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    # Set after setuid (a credential change clears it): if the relay dies, so does the program.
    call(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "parent-death signal")


def _relay(pid: int) -> None:
    """Wait for the program (PID 1 of the namespace) and end with its status; its death ends the namespace."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


def _stand_ins(paths: list[str], run_dir: str) -> list[tuple[str, str, str]]:
    """Make interpreter directories under a closed directory (e.g. /root) visible to the unprivileged uid.

    For each such path: (original child dir, its mount point inside an open stand-in dir, the closed dir the
    stand-in covers). The stand-in shows only that child, so the rest of the closed directory stays hidden.
    """
    plans: dict[str, tuple[str, str, str]] = {}
    for path in paths:
        parts = os.path.realpath(path).split(os.sep)
        for depth in range(2, len(parts)):
            closed = os.sep.join(parts[:depth]) or os.sep
            if os.stat(closed).st_mode & 0o001 == 0:
                if closed not in plans:
                    child = parts[depth]
                    stand_in = os.path.join(run_dir, f"stand-in-{len(plans)}")
                    os.makedirs(os.path.join(stand_in, child), mode=0o755, exist_ok=True)
                    os.chmod(stand_in, 0o755)
                    plans[closed] = (os.path.join(closed, child), os.path.join(stand_in, child), closed)
                break
    return list(plans.values())


def _limit(limits: dict) -> None:
    cpu = int(limits["cpu_s"])
    memory = int(limits["memory_mb"]) * 1024 * 1024
    fsize = int(limits["fsize_mb"]) * 1024 * 1024
    for name, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NPROC, int(limits["nproc"]), int(limits["nproc"])),
        (resource.RLIMIT_NOFILE, 256, 256),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        resource.setrlimit(name, (soft, hard))


def _guard(workdir: str):
    """An audit hook refusing what a benchmark solution never needs (see the module docstring)."""
    inside = workdir + os.sep
    own_proc = f"/proc/{os.getpid()}"

    def allowed_path(path: object) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor: opening it was checked
        real = os.path.realpath(os.fsdecode(path))
        return real == workdir or real.startswith(inside)

    def other_process(path: object) -> bool:
        if isinstance(path, int):
            return False
        real = os.path.realpath(os.fsdecode(path))
        return real.startswith("/proc/") and real.split("/")[2].isdigit() and not (
            real == own_proc or real.startswith(own_proc + "/"))

    def hook(event: str, args: tuple) -> None:
        if event in BLOCKED_EVENTS or event.startswith(BLOCKED_PREFIXES):
            refused = True
        elif event == "open":
            path, _, flags = args
            writing = isinstance(flags, int) and flags & WRITE_FLAGS
            refused = path is not None and ((writing and not allowed_path(path)) or other_process(path))
        elif event in PATH_EVENTS:
            refused = not allowed_path(args[0]) or (event == "os.rename" and not allowed_path(args[1]))
        elif event == "import":
            refused = args[0] in BLOCKED_IMPORTS
        else:
            refused = False
        if refused:
            raise PermissionError(f"sandbox: {event} is not allowed")

    return hook


if __name__ == "__main__":
    main()
