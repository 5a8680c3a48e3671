"""The training image's PID 1 (``docker/train/forward_sigterm.py``), run on the host: it passes a stop
signal to the toolkit's whole process group and survives signals that race with its child's exit."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import REPO_ROOT

FORWARD_SIGTERM = REPO_ROOT / "docker" / "train" / "forward_sigterm.py"
WAIT_S = 60

# A stand-in for the training toolkit: starts the "training script" through a shell, as the toolkit
# does, and exits with its status (SIGTERM reaches it ignored, as the real PID 1 sets it up).
TOOLKIT = """
import subprocess, sys
sys.exit(subprocess.run(["/bin/sh", "-c", f"{sys.executable} {sys.argv[1]} {sys.argv[2]}"]).returncode)
"""
# The "training script": saves on SIGTERM; it has a child of its own, which only a signal to the
# whole process group reaches.
SCRIPT = """
import pathlib, signal, subprocess, sys, time
folder = pathlib.Path(sys.argv[1])
received = []
signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
grandchild = subprocess.Popen([sys.executable, "-c", '''
import pathlib, signal, sys
folder = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    (folder / "grandchild-got").write_text(str(signum))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(folder / "grandchild-ready").touch()
while True:
    signal.pause()
''', str(folder)])
deadline = time.monotonic() + 60
while not (folder / "grandchild-ready").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
(folder / "ready").touch()
while not received and time.monotonic() < deadline:
    time.sleep(0.01)
(folder / "script-got").write_text(str(received[0]) if received else "nothing")
grandchild.wait(timeout=30)
sys.exit(3)
"""


def load_forward_sigterm():
    spec = importlib.util.spec_from_file_location("forward_sigterm", FORWARD_SIGTERM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_for(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat ("Z": exited, not yet collected)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_sigterm_reaches_the_whole_process_group_and_the_commands_status_comes_back(tmp_path):
    (tmp_path / "toolkit.py").write_text(TOOLKIT)
    (tmp_path / "script.py").write_text(SCRIPT)
    command = [sys.executable, str(FORWARD_SIGTERM), sys.executable, str(tmp_path / "toolkit.py"),
               str(tmp_path / "script.py"), str(tmp_path)]
    pid1 = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), "the script and its child to start")
        pid1.send_signal(signal.SIGTERM)
        _, errors = pid1.communicate(timeout=WAIT_S)
    finally:
        pid1.kill()
    assert pid1.returncode == 3, errors  # the script's own status, through the toolkit
    assert (tmp_path / "script-got").read_text() == str(int(signal.SIGTERM))
    assert (tmp_path / "grandchild-got").read_text() == str(int(signal.SIGTERM))
    assert "Traceback" not in errors, errors


def test_a_signal_as_the_command_exits_neither_kills_pid1_nor_loses_the_exit_status():
    forward_sigterm = load_forward_sigterm()
    forwarder = forward_sigterm.Forwarder()
    child = forwarder.start([sys.executable, "-c", "import sys; sys.exit(5)"])
    wait_for(lambda: process_state(child.pid) == "Z", "the command to exit")
    forwarder.handle(signal.SIGTERM, None)  # the signal arrives now: exited, not yet collected
    assert forwarder.wait() == 5
    forwarder.handle(signal.SIGTERM, None)  # and after it was collected
    assert forwarder.exit_status == 5


def test_a_signal_before_the_script_started_stops_the_command():
    forward_sigterm = load_forward_sigterm()
    forwarder = forward_sigterm.Forwarder()
    forwarder.handle(signal.SIGTERM, None)  # before there is a child: remembered
    # A command that ignores SIGTERM and has no child yet: nothing to save, so it is killed.
    forwarder.start([sys.executable, "-c", "import time; time.sleep(120)"])
    assert forwarder.wait() == 128 + signal.SIGKILL
