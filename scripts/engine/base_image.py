"""The Python 3.11 base image the Dockerfiles build on, made offline where it cannot be pulled.

The base is the public ``python:3.11-slim-bookworm`` when it is present or can be pulled;
otherwise a Debian bookworm root filesystem with Python 3.11 is made with debootstrap and imported
(the tarball is cached, so this happens once per machine).

Standard library only: ``make build`` needs no Python environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts import CACHE_DIR
from scripts.engine import apt
from scripts.engine.dockerd import Engine
from scripts.engine.errors import EngineUnavailable

BASE_CACHE_DIR = CACHE_DIR / "base"

PUBLIC_BASE_IMAGE = "python:3.11-slim-bookworm"
OFFLINE_BASE_REPOSITORY = "sagemaker-classifier-base"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SECURITY_MIRROR = os.environ.get("DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
# What the offline base holds: Debian's Python 3.11 with venv (the Dockerfiles make /opt/venv).
DEBOOTSTRAP_PACKAGES = ("python3", "python3-venv", "ca-certificates")


def debootstrap_command(rootfs: Path, suite: str = DEBIAN_SUITE, mirror: str = DEBIAN_MIRROR) -> list[str]:
    return [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(DEBOOTSTRAP_PACKAGES)}",
        suite,
        str(rootfs),
        mirror,
    ]


def apt_sources(suite: str = DEBIAN_SUITE) -> str:
    """The offline base's sources.list: like the public image's, with updates and security fixes."""
    return (
        f"deb {DEBIAN_MIRROR} {suite} main\n"
        f"deb {DEBIAN_MIRROR} {suite}-updates main\n"
        f"deb {DEBIAN_SECURITY_MIRROR} {suite}-security main\n"
    )


def offline_base_image() -> str:
    """``sagemaker-classifier-base:python3.11-bookworm-<recipe hash>``: a changed recipe is a new image."""
    recipe = json.dumps([debootstrap_command(Path("ROOTFS")), apt_sources(), import_changes()])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"{OFFLINE_BASE_REPOSITORY}:python3.11-{DEBIAN_SUITE}-{digest}"


def import_changes() -> list[str]:
    """``docker import --change`` options that make the rootfs behave like the public slim image."""
    changes = [
        "ENV LANG=C.UTF-8",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        'CMD ["python3"]',
    ]
    return [option for change in changes for option in ("--change", change)]


def _make_base_tarball(tarball: Path) -> None:
    """debootstrap a minimal bookworm with Python 3.11, trim it and tar it to ``tarball``."""
    if not shutil.which("debootstrap"):
        if not apt.can_install():
            raise EngineUnavailable(
                f"cannot pull {PUBLIC_BASE_IMAGE} and debootstrap is missing: apt-get install debootstrap"
            )
        apt.install_debian_packages(apt.DEBOOTSTRAP_PACKAGE)
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as scratch:
        rootfs = Path(scratch) / "rootfs"
        print(
            f"[docker-engine] debootstrap {DEBIAN_SUITE} with Python 3.11 (about a minute, once)",
            file=sys.stderr,
            flush=True,
        )
        subprocess.run(debootstrap_command(rootfs), check=True, stdout=subprocess.DEVNULL)
        (rootfs / "etc" / "apt" / "sources.list").write_text(apt_sources())
        for trimmed in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            for child in (rootfs / trimmed).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                elif child.name != "lock":
                    child.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.rename(tarball)


def _try_pull(engine: Engine, image: str) -> bool:
    try:
        return engine.run("pull", "--quiet", image, check=False, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_base_image(engine: Engine, requested: str | None = None) -> str:
    """The base image to build on: ``requested`` if given, else the public slim one, else our own."""
    if requested:
        return requested
    if engine.image_exists(PUBLIC_BASE_IMAGE) or _try_pull(engine, PUBLIC_BASE_IMAGE):
        return PUBLIC_BASE_IMAGE
    image = offline_base_image()
    if engine.image_exists(image):
        return image
    print(
        f"[docker-engine] {PUBLIC_BASE_IMAGE} cannot be pulled: making {image} offline",
        file=sys.stderr,
        flush=True,
    )
    tarball = BASE_CACHE_DIR / f"{image.split(':', 1)[1]}.tar"
    if not tarball.is_file():
        _make_base_tarball(tarball)
    with open(tarball, "rb") as stream:
        subprocess.run(
            engine.command("import", *import_changes(), "-", image),
            stdin=stream,
            env=engine.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return image
