"""Fixtures of the container tests.

``engine``: the Docker engine that answers, else a private dockerd started for the session (as
root) and stopped by its pid afterwards; none at all skips the tests with a warning, or fails them
under CI (``CI=true``). ``built_images``: both images built once per session (BuildKit's cache and
the base image live in the engine's data-root outside the repository, so a second session is fast).
"""

from __future__ import annotations

import os
import subprocess
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from scripts.containers import build, images
from scripts.engine import dockerd
from scripts.engine.base_image import ensure_base_image
from scripts.engine.errors import EngineUnavailable

# A tag per checkout or session (TEST_IMAGE_TAG): parallel sessions never test each other's build.
TEST_TAG = os.environ.get("TEST_IMAGE_TAG", "test")


def build_failure_message(kind: str, error: subprocess.CalledProcessError) -> str:
    output = ((error.stdout or "") + (error.stderr or "")).splitlines()
    return f"building the {kind} image failed ({error.returncode}):\n" + "\n".join(output[-40:])


@pytest.fixture(scope="session")
def engine() -> Iterator[dockerd.Engine]:
    try:
        engine = dockerd.connect()
    except EngineUnavailable as error:
        message = f"NO DOCKER ENGINE: the container tests did not run: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    try:
        yield engine
    finally:
        dockerd.disconnect(engine)


@pytest.fixture(scope="session")
def base_image(engine: dockerd.Engine) -> str:
    return ensure_base_image(engine, os.environ.get("BASE_IMAGE") or None)


@pytest.fixture(scope="session")
def built_images(engine: dockerd.Engine, base_image: str) -> dict[str, str]:
    """``{"train": "sagemaker-classifier-train:test", "serve": ...}``, both built (in parallel)."""
    kinds = list(images.REPOSITORIES)
    with ThreadPoolExecutor(len(kinds)) as pool:
        builds = {
            kind: pool.submit(build.build_image, engine, kind, [TEST_TAG], base_image, quiet=True)
            for kind in kinds
        }
    for kind, job in builds.items():
        error = job.exception()
        if isinstance(error, subprocess.CalledProcessError):
            pytest.fail(build_failure_message(kind, error), pytrace=False)
        if error is not None:
            raise error
    return {kind: f"{images.repository(kind)}:{TEST_TAG}" for kind in kinds}
