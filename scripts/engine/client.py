"""The Docker client the builds use: one that can build with BuildKit.

BuildKit is needed for ``RUN --mount`` (the pip CA secret, the pip cache, the wheelhouse). A client
has it through the buildx plugin, or built in (clients 18.09 to 22.x, such as Debian's 20.10 at
``/usr/bin/docker``). The choice is a pure function of what each candidate reports
(:func:`choose_client`); :func:`find_client` asks the candidates and, when none will do and we may
(root with apt-get: :func:`default_installer`), installs Debian's ``docker.io`` and asks again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from scripts.engine import apt
from scripts.engine.errors import EngineUnavailable

DEBIAN_CLIENT = "/usr/bin/docker"
PROBE_TIMEOUT_S = 30


@dataclass(frozen=True)
class ClientProbe:
    """What one candidate client says of itself."""

    path: str
    version: tuple[int, int] | None  # None: it did not answer ``--version`` readably
    has_buildx: bool


def parse_client_version(text: str) -> tuple[int, int]:
    """``Docker version 20.10.24+dfsg1, build 297e128`` -> ``(20, 10)``."""
    match = re.search(r"version (\d+)\.(\d+)", text)
    if not match:
        raise ValueError(f"cannot read a Docker client version from {text!r}")
    return int(match.group(1)), int(match.group(2))


def has_builtin_buildkit(version: tuple[int, int]) -> bool:
    """Clients 18.09 to 22.x carry BuildKit; 23+ need the buildx plugin for it."""
    return (18, 9) <= version < (23, 0)


def can_build(probe: ClientProbe) -> bool:
    return probe.has_buildx or (probe.version is not None and has_builtin_buildkit(probe.version))


def describe(probe: ClientProbe) -> str:
    version = ".".join(map(str, probe.version)) if probe.version else "unknown version"
    return f"{probe.path} ({version}, no buildx plugin)"


MISSING_CLIENT_ADVICE = (
    "install the buildx plugin for it, or Debian's docker.io (its 20.10 client has BuildKit built in: "
    "apt-get install docker.io), or set DOCKER=/path/to/docker"
)


@dataclass(frozen=True)
class ClientChoice:
    """Use ``client``; or install Debian's ``docker.io`` and look again; or stop with ``problem``."""

    client: str | None = None
    install: bool = False
    problem: str = ""


def choose_client(
    probes: Sequence[ClientProbe], may_install: bool, installed_already: bool = False
) -> ClientChoice:
    """The first candidate with BuildKit; else install docker.io (once, if allowed); else say why not."""
    for probe in probes:
        if can_build(probe):
            return ClientChoice(client=probe.path)
    if may_install and not installed_already:
        return ClientChoice(install=True)
    if probes:
        found = ", ".join(describe(probe) for probe in probes)
        return ClientChoice(problem=f"no Docker client with BuildKit: found {found}; {MISSING_CLIENT_ADVICE}")
    return ClientChoice(problem=f"no Docker client found: {MISSING_CLIENT_ADVICE}")


def candidates(environ: Mapping[str, str], debian_client: str = DEBIAN_CLIENT) -> list[str]:
    """``docker`` on PATH, then Debian's, each once."""
    found = [shutil.which("docker", path=environ.get("PATH", os.defpath)), debian_client]
    return list(dict.fromkeys(path for path in found if path and os.access(path, os.X_OK)))


def probe(docker: str, environ: Mapping[str, str] | None = None) -> ClientProbe:
    """Asks a client for its buildx plugin and its version."""
    try:
        buildx = subprocess.run(
            [docker, "buildx", "version"], capture_output=True, env=environ, timeout=PROBE_TIMEOUT_S
        )
        answer = subprocess.run(
            [docker, "--version"], capture_output=True, text=True, env=environ, timeout=PROBE_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return ClientProbe(docker, None, False)
    try:
        version = parse_client_version(answer.stdout)
    except ValueError:
        version = None
    return ClientProbe(docker, version, buildx.returncode == 0)


def default_installer() -> Callable[[], None] | None:
    """Installs Debian's docker.io (it also brings the dockerd a private engine needs), where we may:
    as root with apt-get. None elsewhere."""
    if not apt.can_install():
        return None
    return lambda: apt.install_debian_packages(apt.DOCKER_PACKAGE)


def find_client(
    environ: Mapping[str, str] = os.environ,
    debian_client: str = DEBIAN_CLIENT,
    install: Callable[[], None] | None = None,
) -> str:
    """A Docker client that can build with BuildKit: ``$DOCKER``, else the first candidate that can.

    Where none can, ``install`` (see :func:`default_installer`) runs once and the candidates are
    asked again. Raises :class:`EngineUnavailable` with one line saying what to install otherwise.
    """
    if environ.get("DOCKER"):
        if not os.access(environ["DOCKER"], os.X_OK):
            raise EngineUnavailable(f"DOCKER={environ['DOCKER']} is not an executable Docker client")
        return environ["DOCKER"]
    installed = False
    while True:
        probes = [probe(path, environ) for path in candidates(environ, debian_client)]
        choice = choose_client(probes, may_install=install is not None, installed_already=installed)
        if choice.client:
            return choice.client
        if not choice.install:
            raise EngineUnavailable(choice.problem)
        install()
        installed = True
