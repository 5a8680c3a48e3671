"""Debian packages the project installs itself, as root, where they are missing (the Docker plumbing's,
and the browser the report's test renders pages with)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# Debian's docker.io holds both halves we may lack: dockerd and a client (20.10) with BuildKit built in.
DOCKER_PACKAGE = "docker.io"
DEBOOTSTRAP_PACKAGE = "debootstrap"
# docker-compose 1.29: what the SageMaker Python SDK v2's local mode runs when `docker compose` is missing.
COMPOSE_PACKAGE = "docker-compose"


def can_install() -> bool:
    """Whether this process may install Debian packages: root, with apt-get."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def install_debian_packages(*packages: str) -> None:
    """``apt-get update`` then ``apt-get install`` (no recommends), noninteractive."""
    print(f"[apt-get] installing {' '.join(packages)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait_for_lock = ["-o", "DPkg::Lock::Timeout=300"]  # another install may be running
    subprocess.run(["apt-get", *wait_for_lock, "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", *wait_for_lock, "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True, env=env,
    )


def ensure_command(command: str, package: str) -> str | None:
    """The path of ``command``, installing Debian's ``package`` first where it is missing and we may."""
    if shutil.which(command) is None and can_install():
        install_debian_packages(package)
    return shutil.which(command)
