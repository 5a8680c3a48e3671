"""Image names and tags, defined once for the Makefile, the launchers and the tests.

    python -m scripts.containers.images name train      -> sagemaker-classifier-train
    python -m scripts.containers.images tag             -> the git short SHA (or "latest" outside git)
"""

from __future__ import annotations

import subprocess
import sys

REPOSITORIES = {"train": "sagemaker-classifier-train", "serve": "sagemaker-classifier-serve"}
LATEST = "latest"


def repository(kind: str) -> str:
    """The image (and ECR repository) name of the ``train`` or ``serve`` image."""
    if kind not in REPOSITORIES:
        raise ValueError(f"unknown image kind {kind!r}; expected one of {sorted(REPOSITORIES)}")
    return REPOSITORIES[kind]


def git_tag() -> str:
    """The tag of a fresh build: the git short SHA of HEAD, or ``latest`` outside a checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return LATEST
    return result.stdout.strip()


def main(argv: list[str]) -> None:
    match argv:
        case ["name", kind]:
            print(repository(kind))
        case ["tag"]:
            print(git_tag())
        case _:
            sys.exit("usage: python -m scripts.containers.images name train|serve | tag")


if __name__ == "__main__":
    main(sys.argv[1:])
