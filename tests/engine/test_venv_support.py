"""Whether ``make setup`` can create an environment, decided with what the host Python has or lacks.

apt is the boundary here: its install is recorded, not run (the real installs were checked by hand
on a machine without python3.11-venv).
"""

import subprocess
import sys

import pytest

from scripts import REPO_ROOT
from scripts.engine import apt, venv_support

DEV = venv_support.python_package("dev")


@pytest.fixture
def host(monkeypatch):
    """A host Python with everything, as root with apt: tests take pieces away. Installs are recorded
    and make what they install present."""
    present = {"ensurepip": True, "compiler": True, "headers": True}
    installed: list[str] = []
    provides = {venv_support.venv_package(): "ensurepip", "gcc": "compiler", DEV: "headers"}

    def install(*packages: str) -> None:
        installed.extend(packages)
        present.update({provides[p]: True for p in packages if p in provides})

    monkeypatch.setattr(apt, "install_debian_packages", install)
    monkeypatch.setattr(apt, "can_install", lambda: True)
    monkeypatch.setattr(venv_support, "has_ensurepip", lambda: present["ensurepip"])
    monkeypatch.setattr(venv_support, "has_c_compiler", lambda: present["compiler"])
    monkeypatch.setattr(venv_support, "has_python_headers", lambda: present["headers"])
    return present, installed


def test_a_complete_python_installs_nothing(host):
    venv_support.ensure_venv_support(compiles=True)
    assert host[1] == []


def test_without_ensurepip_root_installs_the_versions_venv_package(host):
    present, installed = host
    present["ensurepip"] = False
    venv_support.ensure_venv_support()
    assert installed == [venv_support.venv_package()]


def test_compiling_environments_get_a_compiler_and_pythons_headers(host):
    present, installed = host
    present.update(compiler=False, headers=False)
    venv_support.ensure_venv_support(compiles=False)  # the others do not need them
    assert installed == []
    venv_support.ensure_venv_support(compiles=True)
    assert installed == [*venv_support.C_COMPILER_PACKAGES, DEV]


@pytest.mark.parametrize("can_install", [False, True])
def test_what_cannot_be_installed_stops_it_with_one_line_naming_the_packages(monkeypatch, host, can_install):
    present, installed = host
    present.update(ensurepip=False, headers=False)
    monkeypatch.setattr(apt, "can_install", lambda: can_install)
    monkeypatch.setattr(apt, "install_debian_packages", lambda *packages: installed.extend(packages))
    with pytest.raises(SystemExit) as stopped:
        venv_support.ensure_venv_support(compiles=True)
    message = str(stopped.value.code)
    assert "\n" not in message and f"apt-get install {venv_support.venv_package()} {DEV}" in message
    assert installed == ([venv_support.venv_package(), DEV] if can_install else [])


def test_the_packages_are_named_after_the_python_version():
    assert venv_support.venv_package((3, 11)) == "python3.11-venv"
    assert venv_support.python_package("dev", (3, 12)) == "python3.12-dev"
    assert venv_support.venv_package() == f"python{sys.version_info[0]}.{sys.version_info[1]}-venv"


def test_make_runs_it_with_the_standard_library_alone():
    """make calls it before any environment exists: with ``python -I`` (no site-packages) it still runs,
    and this machine's Python has what every environment needs."""
    program = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
               "runpy.run_module('scripts.engine.venv_support', run_name='__main__')")
    result = subprocess.run([sys.executable, "-I", "-c", program, str(REPO_ROOT), "--compiles"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
