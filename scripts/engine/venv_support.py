"""Makes sure ``python -m venv`` can work before ``make setup`` creates the environments.

Debian and Ubuntu ship Python's ``venv`` without ``ensurepip`` (the ``python3.X-venv`` package has
it), so on a fresh machine ``python3 -m venv`` stops half-way. Run with the Python that will create
the environments (``make`` does: ``$(PYTHON) -m scripts.engine.venv_support``): as root with apt-get
it installs the package; otherwise it stops with one line naming it. Standard library only.
"""

from __future__ import annotations

import importlib.util
import sys

from scripts.engine import apt


def venv_package(version: tuple[int, int] = sys.version_info[:2]) -> str:
    """Debian's package that holds ``ensurepip`` for Python ``version``."""
    return f"python{version[0]}.{version[1]}-venv"


def has_ensurepip() -> bool:
    return importlib.util.find_spec("ensurepip") is not None


def ensure_venv_support() -> None:
    """Returns once this Python can create environments; raises SystemExit naming what to install."""
    if has_ensurepip():
        return
    package = venv_package()
    if apt.can_install():
        apt.install_debian_packages(package)
        importlib.invalidate_caches()
        if has_ensurepip():
            return
    sys.exit(
        f"{sys.executable} cannot create virtual environments (no ensurepip): install {package} "
        f"(apt-get install {package}), or set PYTHON= to a Python 3.11 that has it"
    )


if __name__ == "__main__":
    ensure_venv_support()
