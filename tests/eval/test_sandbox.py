"""Hostile samples: none escapes, none passes, the run completes; the nonce makes early exits fail."""

import os
import socket
import time
from pathlib import Path

import psutil
import pytest

from eval.datasets import load_tasks
from eval.errors import SandboxError
from eval.sandbox import Limits, Sandbox

SECRET = "codegemma-fake-secret-7f3a9"
SHARED_TMP = Path("/tmp") / f"codegemma-escape-{os.getpid()}"  # /tmp is writable by every user


def hostile_samples(target: Path, victim: Path, port: int) -> dict[str, str]:
    """Module-level code placed after a correct solution, so it runs before the tests would."""
    return {
        "infinite loop": "while True:\n    pass\n",
        "sleep": "import time\ntime.sleep(60)\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "memory bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n",
        "write outside": f"open({str(target)!r}, 'w').write('escaped')\n",
        "write to /tmp": f"open({str(SHARED_TMP)!r}, 'w').write('escaped')\n",
        "delete outside": f"import os\nos.remove({str(victim)!r})\n",
        "rmtree outside": f"import shutil\nshutil.rmtree({str(victim.parent)!r})\n",
        "network": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n",
        "exit(0) before tests": "import sys\nsys.exit(0)\n",
        "os._exit(0) before tests": "import os\nos._exit(0)\n",
        "kill the parent": "import os\nos.kill(os.getppid(), 9)\nos._exit(0)\n",
        "kill the group": "import os\nos.killpg(0, 9)\nos._exit(0)\n",
        "read secrets": (
            "import os\nfound = dict(os.environ)\n"
            "for pid in (os.getppid(), 1):\n"
            "    try:\n        found[pid] = open(f'/proc/{pid}/environ').read()\n"
            "    except OSError as e:\n        found[pid] = str(e)\n"
            "print(found)\nos._exit(0)\n"
        ),
        "fake success output": "print('passed')\nimport os\nos._exit(0)\n",
    }


@pytest.fixture
def victims(tmp_path):
    victim = tmp_path / "victim" / "keep.txt"
    victim.parent.mkdir()
    victim.write_text("keep")
    # World-writable, like /tmp: what protects them is the sandbox, not their permissions.
    for path, mode in ((tmp_path, 0o777), (victim.parent, 0o777), (victim, 0o666)):
        os.chmod(path, mode)
    return tmp_path / "escaped.txt", victim


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    yield server
    server.close()


@pytest.fixture
def runs(tmp_path):
    path = tmp_path / "runs"
    path.mkdir()
    return path


def run_hostile(box: Sandbox, victims, listener, monkeypatch, data_dir):
    monkeypatch.setenv("CODEGEMMA_FAKE_SECRET", SECRET)
    task = load_tasks("humaneval", data_dir)[0]
    target, victim = victims
    samples = hostile_samples(target, victim, listener.getsockname()[1])
    started = time.monotonic()
    outcomes = dict(zip(samples, box.map([task.program(task.reference + code) for code in samples.values()])))
    assert time.monotonic() - started < 30
    for name, outcome in outcomes.items():
        assert not outcome.passed, (name, outcome)
        assert SECRET not in outcome.stdout + outcome.stderr, name
    assert not target.exists() and not SHARED_TMP.exists()
    assert victim.read_text() == "keep"
    with pytest.raises(socket.timeout):
        listener.accept()
    time.sleep(0.2)
    leftovers = [p for p in psutil.process_iter(["cwd"]) if str(p.info["cwd"] or "").startswith(str(box.root))]
    assert leftovers == []
    assert box.run(task.program(task.reference)).passed  # the run goes on
    return outcomes


def test_hostile_samples_with_default_isolation(runs, victims, listener, monkeypatch, data_dir):
    with Sandbox(Limits(timeout_s=2.0, memory_mb=512), workers=2, root=runs) as box:
        outcomes = run_hostile(box, victims, listener, monkeypatch, data_dir)
    assert outcomes["infinite loop"].result == "timed out"
    assert "exit(0)" in outcomes["exit(0) before tests"].result
    assert "before the tests finished" in outcomes["os._exit(0) before tests"].result


def test_hostile_samples_with_the_guard_alone(runs, victims, listener, monkeypatch, data_dir):
    with Sandbox(Limits(timeout_s=2.0, memory_mb=512), workers=2, isolation="guard", root=runs) as box:
        outcomes = run_hostile(box, victims, listener, monkeypatch, data_dir)
    assert "not allowed" in outcomes["network"].result


def test_hostile_samples_with_namespaces_alone(runs, victims, listener, monkeypatch, data_dir):
    """The OS layer without the Python guard: the containment must not rest on the audit hook."""
    try:
        box = Sandbox(Limits(timeout_s=2.0, memory_mb=512), workers=2, isolation="namespaces", guard=False, root=runs)
    except SandboxError as error:
        pytest.skip(str(error))
    with box:
        outcomes = run_hostile(box, victims, listener, monkeypatch, data_dir)
    assert "Read-only file system" in outcomes["write to /tmp"].result
    assert "unreachable" in outcomes["network"].result or "refused" in outcomes["network"].result


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


def test_unknown_isolation_is_refused():
    with pytest.raises(SandboxError, match="unknown isolation"):
        Sandbox(isolation="chroot")
