"""The launchers' environment: exactly the launch lock, no torch, and every launcher starts in it.

``make test`` runs this file with the launcher tests in ``.venv/launch-test`` (the launch lock plus
the test tools); the checks of "this interpreter" skip in any other environment. The user's own
``.venv/launch`` (``make setup-launch``) is checked through a child process.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

import scripts
from scripts import REPO_ROOT

LAUNCH_LOCK = REPO_ROOT / "scripts" / "requirements.txt"
TOOLS_LOCK = REPO_ROOT / "tests" / "requirements-launch.txt"
LAUNCH_PYTHON = REPO_ROOT / ".venv" / "launch" / "bin" / "python"
LAUNCH_TEST_PREFIX = REPO_ROOT / ".venv" / "launch-test"
# What `python -m venv` puts into every environment by itself.
VENV_SEED = {"pip", "setuptools"}
# The trainer's and the server's heavy parts: none may be in the launchers' environment.
FORBIDDEN = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
# The shared facts of code/classifier/ the launchers import: they must import without torch.
TORCH_FREE_CLASSIFIER = (
    "artifact", "dataset", "distribution", "engines", "errors", "hyperparameters", "metrics", "protocol",
    "sagemaker_env",
)
# The benchmarks measure the trainer and the server: they run in .venv/train and .venv/dev.
DEV_ONLY_PACKAGES = ("scripts.bench",)

in_launch_test_env = pytest.mark.skipif(
    Path(sys.prefix).resolve() != LAUNCH_TEST_PREFIX.resolve(),
    reason=f"checks the interpreter of {LAUNCH_TEST_PREFIX} (make test runs it there), not {sys.prefix}",
)


def locked_pins(lock: Path, environment: dict[str, str] | None = None) -> dict[str, str]:
    """``{name: version}`` of a hash-locked requirements file, for the packages whose marker
    holds in ``environment`` (this interpreter's by default)."""
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line)
        if match:
            name, version, marker = match.groups()
            if marker is None or Marker(marker).evaluate(environment):
                pins[canonicalize_name(name)] = version
    return pins


# Run by the user's .venv/launch: what is installed, whether torch can be found, what each
# launcher (argv[1:]) answers to --help, each run as `python -m` runs it, in one process, and the
# values of its environment markers (python_version...).
INSPECT_LAUNCH_ENVIRONMENT = """
import contextlib, importlib.metadata, importlib.util, io, json, runpy, sys
from packaging.markers import default_environment
answers = {}
for module in sys.argv[1:]:
    sys.argv, output = [module, "--help"], io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as exit:
        status = exit.code
    answers[module] = {"status": status, "stdout": output.getvalue()}
print(json.dumps({
    "installed": {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()},
    "torch": importlib.util.find_spec("torch") is not None or "torch" in sys.modules,
    "launchers": answers,
    "markers": default_environment(),
}))
"""


@in_launch_test_env
def test_torch_is_not_importable_here():
    with pytest.raises(ModuleNotFoundError, match="No module named 'torch'"):
        importlib.import_module("torch")
    installed = {canonicalize_name(d.metadata["Name"]) for d in importlib.metadata.distributions()}
    assert not {name for name in installed if FORBIDDEN.match(name)}


@in_launch_test_env
def test_every_package_of_the_launch_lock_is_installed_at_its_pin_and_nothing_else():
    launch, tools = locked_pins(LAUNCH_LOCK), locked_pins(TOOLS_LOCK)
    assert launch and tools and not set(launch) & set(tools)  # the tools' lock leaves the launch pins out
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    assert {name: installed.get(name) for name in launch} == launch
    assert {name: installed.get(name) for name in tools} == tools
    assert set(installed) - set(launch) - set(tools) <= VENV_SEED


@in_launch_test_env
def test_every_launcher_module_and_the_shared_facts_they_use_import_without_torch():
    modules = [
        info.name for info in pkgutil.walk_packages(scripts.__path__, "scripts.")
        if not info.name.startswith(DEV_ONLY_PACKAGES)
    ]
    assert {"scripts.aws.tune", "scripts.report.sources", "scripts.demo"} <= set(modules)
    for name in modules + [f"classifier.{name}" for name in TORCH_FREE_CLASSIFIER]:
        importlib.import_module(name)
    assert "torch" not in sys.modules


def make_launchers() -> set[str]:
    """The modules the Makefile's launcher targets and scripts/deploy.sh run with the launch env."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    modules = set(re.findall(r"\$\(LAUNCH_PY\) -m ([\w.]+)", makefile))
    modules |= set(re.findall(r"-m ([\w.]+)", (REPO_ROOT / "scripts" / "deploy.sh").read_text()))
    return modules


def test_the_users_launch_environment_is_the_lock_without_torch_and_starts_every_launcher():
    assert LAUNCH_PYTHON.exists(), "no .venv/launch: make setup-launch"
    launchers = make_launchers()
    assert launchers >= {"scripts.aws.upload_data", "scripts.aws.tune", "scripts.aws.train_job",
                         "scripts.aws.deploy", "scripts.aws.invoke", "scripts.report",
                         "scripts.containers.push", "scripts.demo"}
    environment = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'code'}{os.pathsep}{REPO_ROOT}"}
    inspected = subprocess.run([LAUNCH_PYTHON, "-c", INSPECT_LAUNCH_ENVIRONMENT, *sorted(launchers)],
                               capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=300)
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    report = json.loads(inspected.stdout)

    installed = {canonicalize_name(name): version for name, version in report["installed"].items()}
    pins = locked_pins(LAUNCH_LOCK, report["markers"])  # its Python's, which may not be this one
    assert {name: installed.pop(name, None) for name in pins} == pins
    assert set(installed) <= VENV_SEED  # nothing beyond the lock
    assert not report["torch"]
    for module, answer in report["launchers"].items():
        assert answer["status"] == 0 and "usage:" in answer["stdout"], (module, answer)


def test_the_dev_environment_has_the_launch_locks_versions():
    """The trainer and report tests (``.venv/dev``) import launcher code too: on the same versions."""
    launch, dev = locked_pins(LAUNCH_LOCK), locked_pins(REPO_ROOT / "tests" / "requirements.txt")
    assert set(launch) <= set(dev)
    assert {name: dev[name] for name in launch} == launch
