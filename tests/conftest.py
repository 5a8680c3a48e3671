"""Session fixtures every folder shares: a tiny learnable dataset, ONE real training run, a moto server.

``trained_run`` runs ``code/train.py`` through the SageMaker training toolkit on the host
(``scripts.local.train.run_training``), like ``make train-local``; every test that needs a
trained artifact, smdebug output or a training log reuses it, so the suite trains once.
``moto_url`` is the AWS the launchers and the job report talk to (``tests/aws/conftest.py``).
Each folder's ``conftest.py`` holds the fixtures of its own concern.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from train_helpers import TRAINED_RUN_HYPERPARAMETERS, TRAINING_TIMEOUT_S, fail_with_log

from scripts.datasets.sample import make_dataset
from scripts.local.server import free_port
from scripts.local.train import TOOLKIT_TRAIN, run_training

# What the suite's training runs hold at once under the temp folder at their peak (measured on a whole
# `make test`, with passing tests' folders removed as they end: pyproject's tmp_path_retention_policy).
SUITE_TEMP_GB = 6


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stops at once, in one line, when the temp folder's disk cannot hold the suite's training runs
    (rather than 50 tests failing half-way with 'No space left on device')."""
    temp_root = Path(session.config.option.basetemp or tempfile.gettempdir()).absolute()
    while not temp_root.exists():
        temp_root = temp_root.parent
    free_gb = shutil.disk_usage(temp_root).free / 1e9
    if free_gb < SUITE_TEMP_GB:
        pytest.exit(
            f"only {free_gb:.1f} GB free under {temp_root}: the suite's training runs need about "
            f"{SUITE_TEMP_GB} GB there (free some space, or set TMPDIR to a folder on a larger disk)",
            returncode=4,
        )


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """3 classes (``001.Affenpinscher`` ...), 24/8/8 images per class in train/valid/test, 64 px."""
    return make_dataset(tmp_path_factory.mktemp("sample_dataset"), num_classes=3, seed=0)


@pytest.fixture(scope="session")
def imagenet_weights_file(tmp_path_factory) -> Path:
    """A resnet18 state_dict shaped like torchvision's ImageNet weights (random: none can be downloaded).

    Written by the training environment's Python: the launcher tests' environment has no torch.
    """
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet-shaped.pth"
    script = (
        "import sys, torch; from torchvision import models; torch.manual_seed(1); "
        "torch.save(models.resnet18(weights=None).state_dict(), sys.argv[1])"
    )
    subprocess.run([str(TOOLKIT_TRAIN.parent / "python"), "-c", script, str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def _training_result(sample_dataset, imagenet_weights_file, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("trained_run")
    hyperparameters = {**TRAINED_RUN_HYPERPARAMETERS, "weights-path": str(imagenet_weights_file)}
    result: subprocess.CompletedProcess = run_training(
        sample_dataset, out, hyperparameters, timeout=TRAINING_TIMEOUT_S
    )
    if result.returncode != 0:
        fail_with_log(f"the shared training run failed (exit {result.returncode})", result.stdout)
    return out, result.stdout


@pytest.fixture(scope="session")
def trained_run(_training_result) -> Path:
    """The OUT folder (like /opt/ml) of one successful training run on ``sample_dataset``."""
    return _training_result[0]


@pytest.fixture(scope="session")
def trained_run_log(_training_result) -> str:
    """That run's whole log (toolkit and train.py, stdout and stderr)."""
    return _training_result[1]


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout} s")


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory) -> Iterator[str]:
    """A moto server for the whole session, on a free loopback port; stopped at the end."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=output, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
