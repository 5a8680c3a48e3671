"""The Docker plumbing's pure parts: the client's BuildKit, the private engine's command, the offline base."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from scripts import REPO_ROOT
from scripts.engine import base_image, dockerd


def test_private_engine_keeps_everything_under_its_root_with_host_networking_only(tmp_path):
    private = dockerd.PrivateEngine(tmp_path)
    command = private.dockerd_command("/usr/sbin/dockerd")
    assert command[command.index("--host") + 1] == f"unix://{tmp_path}/docker.sock"
    for option in ("--data-root", "--exec-root", "--pidfile"):
        assert command[command.index(option) + 1].startswith(str(tmp_path))
    assert {"--bridge=none", "--iptables=false"} <= set(command)


def test_debootstrap_base_holds_python_with_venv_and_security_updates():
    command = base_image.debootstrap_command(base_image.BASE_CACHE_DIR / "rootfs")
    assert "--variant=minbase" in command
    assert "python3" in command[2] and "python3-venv" in command[2]
    assert command[3] == "bookworm"
    assert "bookworm-security" in base_image.apt_sources()
    assert base_image.offline_base_image().startswith("sagemaker-classifier-base:python3.11-bookworm-")


def test_mounts_under_the_private_engine_are_found_for_unmounting(tmp_path):
    listing = (
        f"nsfs {tmp_path}/exec/netns/default nsfs rw 0 0\n"
        f"overlay {tmp_path}-other/x overlay rw 0 0\n"
        "proc /proc proc rw 0 0\n"
    )
    assert dockerd.mounts_under(listing, tmp_path) == [f"{tmp_path}/exec/netns/default"]


@pytest.mark.parametrize("ci", ["", "true"])
def test_without_any_docker_the_container_tests_skip_loudly_or_fail_under_ci(tmp_path, ci):
    environ = {**os.environ, "DOCKER": str(tmp_path / "no-docker"), "CI": ci}
    report = tmp_path / "report.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/containers/test_images.py", "-p", "no:cacheprovider", "-rsE",
         f"--junitxml={report}"],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    suite = ElementTree.parse(report).getroot().find("testsuite")
    counts = {name: int(suite.get(name)) for name in ("tests", "skipped", "errors", "failures")}
    assert counts["tests"] > 0, result.stdout[-3000:]
    assert "NO DOCKER ENGINE" in result.stdout
    if ci:  # every test fails, none passes or is skipped
        assert counts["errors"] + counts["failures"] == counts["tests"], counts
        assert result.returncode != 0
    else:  # every test is skipped, with a warning in the summary
        assert counts["skipped"] == counts["tests"], counts
        assert result.returncode == 0 and "warning" in result.stdout.splitlines()[-1]


# ---------------------------------------------------------------- the private engine, shared


HOLD_SESSION = """
import sys
from pathlib import Path
from scripts.engine import dockerd
engine = dockerd.connect(dockerd.PrivateEngine(Path(sys.argv[1])))
print("connected", flush=True)
sys.stdin.readline()
dockerd.disconnect(engine)
print("left", flush=True)
"""


@pytest.fixture
def private_engine(monkeypatch):
    """A private engine's paths of its own, in a short temporary root (unix socket paths are short);
    whatever dockerd a test leaves there is stopped. The shared engine is never touched."""
    if os.geteuid() != 0 or not (shutil.which("dockerd") or os.path.exists("/usr/sbin/dockerd")):
        message = "starting a private dockerd needs root and dockerd (apt-get install docker.io)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="engine-", dir="/tmp"))
    private = dockerd.PrivateEngine(root)
    assert private.root != dockerd.ENGINE_DIR
    monkeypatch.setenv("DOCKER_HOST", f"unix://{root}/nothing.sock")  # no other engine answers
    try:
        yield private
    finally:
        pid = dockerd.read_pid(private.pidfile)
        if pid is not None:
            dockerd.stop_private_engine(private, pid)
        shutil.rmtree(root, ignore_errors=True)


def hold_session(private: dockerd.PrivateEngine) -> subprocess.Popen:
    """Another process using the engine (like a `make demo` during `make test`), until told to leave."""
    session = subprocess.Popen(
        [sys.executable, "-c", HOLD_SESSION, str(private.root)], cwd=REPO_ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert session.stdout.readline().strip() == "connected"
    return session


def answers(engine_client: str, private: dockerd.PrivateEngine) -> bool:
    return dockerd.engine_answers(engine_client, private.host)


@pytest.mark.docker
def test_the_private_engine_runs_until_the_last_session_using_it_has_left(private_engine):
    first = dockerd.connect(private_engine)
    pid = first.started_pid
    assert pid and answers(first.docker, private_engine)
    other = hold_session(private_engine)

    dockerd.disconnect(first)  # the session that started it leaves first
    assert answers(first.docker, private_engine) and dockerd.read_pid(private_engine.pidfile) == pid

    other.stdin.write("leave\n")
    other.stdin.flush()
    assert other.stdout.readline().strip() == "left"
    assert other.wait(timeout=60) == 0
    assert dockerd.read_pid(private_engine.pidfile) is None and not answers(first.docker, private_engine)


@pytest.mark.docker
def test_a_crashed_session_does_not_keep_the_engine_and_a_pinned_engine_stays(private_engine):
    first = dockerd.connect(private_engine)
    crashing = hold_session(private_engine)
    crashing.kill()  # SIGKILL: no disconnect; the kernel drops its lease
    crashing.wait(timeout=30)
    dockerd.disconnect(first)
    assert not answers(first.docker, private_engine)

    pinned = dockerd.connect(private_engine)  # as `python -m scripts.engine start` does
    dockerd.pin(private_engine)
    dockerd.disconnect(pinned)
    assert answers(pinned.docker, private_engine)  # left running for whoever comes next
    assert not dockerd.engine_in_use(private_engine)
