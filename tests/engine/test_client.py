"""Which Docker client builds the images, decided with fake clients on PATH.

Each fake ``docker`` answers ``--version`` and ``buildx version`` as the real client it stands for:
Docker 28 without the buildx plugin (the fresh machine's ``/usr/local/bin/docker``), Docker 28
with it, and Debian's 20.10 (BuildKit built in).
"""

from pathlib import Path

import pytest

from scripts.engine import client
from scripts.engine.errors import EngineUnavailable

DOCKER_28 = "Docker version 28.2.2, build e6534b4"
DEBIAN_20_10 = "Docker version 20.10.24+dfsg1, build 297e128"


def fake_client(folder: Path, version: str, buildx: bool) -> Path:
    """A ``docker`` executable in ``folder`` that reports ``version`` and has the buildx plugin or not."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "docker"
    buildx_answer = 'echo "github.com/docker/buildx v0.17.1"; exit 0' if buildx else (
        "echo \"docker: 'buildx' is not a docker command.\" >&2; exit 1")
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "{version}"; exit 0; fi\n'
        f'if [ "$1" = "buildx" ]; then {buildx_answer}; fi\n'
        "exit 2\n"
    )
    path.chmod(0o755)
    return path


@pytest.fixture
def machine(tmp_path):
    """PATH with a Docker 28 client lacking buildx, and where Debian's client would be installed."""
    no_buildkit = fake_client(tmp_path / "usr-local-bin", DOCKER_28, buildx=False)
    return {"PATH": str(no_buildkit.parent)}, tmp_path / "usr-bin" / "docker"


def test_probes_read_the_version_and_the_buildx_plugin(tmp_path):
    assert client.probe(str(fake_client(tmp_path / "a", DOCKER_28, buildx=False))) == client.ClientProbe(
        str(tmp_path / "a" / "docker"), (28, 2), False)
    assert client.probe(str(fake_client(tmp_path / "b", DOCKER_28, buildx=True))).has_buildx
    assert client.probe(str(fake_client(tmp_path / "c", DEBIAN_20_10, buildx=False))).version == (20, 10)
    missing = str(tmp_path / "missing")
    assert client.probe(missing) == client.ClientProbe(missing, None, False)


def test_client_version_and_builtin_buildkit():
    assert client.parse_client_version(DEBIAN_20_10) == (20, 10)
    assert client.has_builtin_buildkit((20, 10))
    assert not client.has_builtin_buildkit((28, 2))  # needs the buildx plugin
    with pytest.raises(ValueError, match="version"):
        client.parse_client_version("podman")


def test_a_client_with_the_buildx_plugin_is_used(tmp_path):
    with_buildx = fake_client(tmp_path / "bin", DOCKER_28, buildx=True)
    environ = {"PATH": str(with_buildx.parent)}
    assert client.find_client(environ, debian_client=str(tmp_path / "none"), install=None) == str(with_buildx)


def test_debians_client_is_found_beside_one_without_buildkit(machine):
    environ, debian = machine
    fake_client(debian.parent, DEBIAN_20_10, buildx=False)
    assert client.find_client(environ, debian_client=str(debian), install=None) == str(debian)


def test_without_buildkit_docker_io_is_installed_once_and_its_client_used(machine):
    environ, debian = machine
    installs = []

    def install():  # what apt-get install docker.io leaves behind
        installs.append(1)
        fake_client(debian.parent, DEBIAN_20_10, buildx=False)

    assert client.find_client(environ, debian_client=str(debian), install=install) == str(debian)
    assert installs == [1]


def test_an_install_that_brings_no_buildkit_client_stops_with_one_line(machine):
    environ, debian = machine
    installs = []
    with pytest.raises(EngineUnavailable) as error:
        client.find_client(environ, debian_client=str(debian), install=lambda: installs.append(1))
    assert installs == [1]
    message = str(error.value)
    assert "\n" not in message
    assert "28.2, no buildx plugin" in message and "apt-get install docker.io" in message


def test_without_the_right_to_install_it_stops_naming_what_to_install(machine):
    environ, debian = machine
    with pytest.raises(EngineUnavailable, match=r"no Docker client with BuildKit: found .*docker \(28\.2"):
        client.find_client(environ, debian_client=str(debian), install=None)
    with pytest.raises(EngineUnavailable, match="no Docker client found: install the buildx plugin"):
        client.find_client({"PATH": ""}, debian_client=str(debian), install=None)


def test_docker_names_the_client_to_use(tmp_path):
    chosen = fake_client(tmp_path, DOCKER_28, buildx=False)
    assert client.find_client({"DOCKER": str(chosen), "PATH": ""}) == str(chosen)
    with pytest.raises(EngineUnavailable, match="not an executable Docker client"):
        client.find_client({"DOCKER": str(tmp_path / "nope")})


def test_the_decision_is_a_pure_function_of_the_probes():
    none = client.ClientProbe("/usr/local/bin/docker", (28, 2), False)
    debian = client.ClientProbe("/usr/bin/docker", (20, 10), False)
    buildx = client.ClientProbe("/opt/docker", (28, 2), True)
    assert client.choose_client([none, buildx], may_install=True).client == "/opt/docker"
    assert client.choose_client([none, debian], may_install=False).client == "/usr/bin/docker"
    assert client.choose_client([none], may_install=True).install
    assert client.choose_client([none], may_install=True, installed_already=True).problem
    assert "install the buildx plugin" in client.choose_client([], may_install=False).problem
