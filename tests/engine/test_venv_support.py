"""Whether ``make setup`` can create environments, decided with Python's ensurepip present or not.

apt is the AWS-like boundary here: its install is recorded, not run (the real install was checked
by hand on a machine without python3.11-venv).
"""

import subprocess
import sys

import pytest

from scripts import REPO_ROOT
from scripts.engine import apt, venv_support


@pytest.fixture
def installs(monkeypatch):
    installed: list[str] = []
    monkeypatch.setattr(apt, "install_debian_packages", lambda *packages: installed.extend(packages))
    return installed


def test_a_python_with_ensurepip_installs_nothing(monkeypatch, installs):
    monkeypatch.setattr(apt, "can_install", lambda: True)
    venv_support.ensure_venv_support()
    assert installs == []


def test_without_ensurepip_root_installs_the_versions_venv_package(monkeypatch, installs):
    answers = iter([False, True])  # missing, then there after the install
    monkeypatch.setattr(venv_support, "has_ensurepip", lambda: next(answers))
    monkeypatch.setattr(apt, "can_install", lambda: True)
    venv_support.ensure_venv_support()
    assert installs == [venv_support.venv_package()]


@pytest.mark.parametrize("can_install", [False, True])
def test_without_ensurepip_it_stops_with_one_line_naming_the_package(monkeypatch, installs, can_install):
    monkeypatch.setattr(venv_support, "has_ensurepip", lambda: False)
    monkeypatch.setattr(apt, "can_install", lambda: can_install)
    with pytest.raises(SystemExit) as stopped:
        venv_support.ensure_venv_support()
    message = str(stopped.value.code)
    assert "\n" not in message and "no ensurepip" in message
    assert f"apt-get install {venv_support.venv_package()}" in message
    assert installs == ([venv_support.venv_package()] if can_install else [])


def test_the_package_is_named_after_the_python_version():
    assert venv_support.venv_package((3, 11)) == "python3.11-venv"
    assert venv_support.venv_package() == f"python{sys.version_info[0]}.{sys.version_info[1]}-venv"


def test_make_runs_it_with_the_standard_library_alone():
    """make calls it before any environment exists: with ``python -I`` (no site-packages) it still runs."""
    program = ("import sys; sys.path.insert(0, sys.argv[1]); "
               "import scripts.engine.venv_support as v; v.ensure_venv_support()")
    result = subprocess.run([sys.executable, "-I", "-c", program, str(REPO_ROOT)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
