"""The Docker plumbing's pure parts: the client's BuildKit, the private engine's command, the offline base."""

import os
import re
import subprocess
import sys

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


@pytest.mark.parametrize(("ci", "outcome"), [("", "skipped"), ("true", "error")])
def test_without_any_docker_the_container_tests_skip_loudly_or_fail_under_ci(tmp_path, ci, outcome):
    environ = {**os.environ, "DOCKER": str(tmp_path / "no-docker"), "CI": ci}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/containers/test_images.py", "-p", "no:cacheprovider", "-rsE"],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = result.stdout.splitlines()[-1]
    tests = len(re.findall(r"^def test_", (REPO_ROOT / "tests/containers/test_images.py").read_text(), re.M))
    assert f"{tests} {outcome}" in summary, result.stdout[-3000:]
    assert "NO DOCKER ENGINE" in result.stdout
    if outcome == "skipped":
        assert result.returncode == 0 and "warning" in summary
    else:
        assert result.returncode != 0
