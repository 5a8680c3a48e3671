"""What ``make setup`` needs from the host Python before it creates an environment.

* ``ensurepip``: Debian and Ubuntu ship Python's ``venv`` without it (``python3.X-venv`` has it), so
  on a fresh machine ``python3 -m venv`` stops half-way.
* ``--compiles``: a C compiler and Python's headers, for the environments whose locks hold
  source-only packages with a C extension (sagemaker-training and pyinstrument-cext, in ``train``
  and ``dev``); pip builds them once and caches the wheels.

Run with the Python that will create the environments (``make`` does:
``$(PYTHON) -m scripts.engine.venv_support``): as root with apt-get it installs the missing Debian
packages; otherwise it stops with one line naming them. Standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import sysconfig
from pathlib import Path

from scripts.engine import apt

C_COMPILER_PACKAGES = ("gcc", "libc6-dev")


def python_package(suffix: str, version: tuple[int, int] = sys.version_info[:2]) -> str:
    """Debian's ``python3.X-<suffix>`` package for Python ``version`` (``venv``, ``dev``)."""
    return f"python{version[0]}.{version[1]}-{suffix}"


def venv_package(version: tuple[int, int] = sys.version_info[:2]) -> str:
    """Debian's package that holds ``ensurepip`` for Python ``version``."""
    return python_package("venv", version)


def has_ensurepip() -> bool:
    return importlib.util.find_spec("ensurepip") is not None


def has_c_compiler() -> bool:
    return shutil.which("cc") is not None or shutil.which("gcc") is not None


def has_python_headers() -> bool:
    return (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()


def missing_packages(compiles: bool) -> list[str]:
    """The Debian packages this Python lacks to create an environment (and to compile, if asked)."""
    missing = [] if has_ensurepip() else [venv_package()]
    if compiles:
        missing += [] if has_c_compiler() else list(C_COMPILER_PACKAGES)
        missing += [] if has_python_headers() else [python_package("dev")]
    return missing


def ensure_venv_support(compiles: bool = False) -> None:
    """Returns once this Python can create the environment; raises SystemExit naming what to install."""
    missing = missing_packages(compiles)
    if not missing:
        return
    if apt.can_install():
        apt.install_debian_packages(*missing)
        importlib.invalidate_caches()
        missing = missing_packages(compiles)
        if not missing:
            return
    packages = " ".join(missing)
    sys.exit(
        f"{sys.executable} cannot create this environment: install {packages} "
        f"(apt-get install {packages}), or set PYTHON= to a Python 3.11 that has what they provide"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compiles", action="store_true", help="also a C compiler and Python's headers")
    ensure_venv_support(parser.parse_args().compiles)
