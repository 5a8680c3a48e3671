"""Image names and tags, defined once for the Makefile, the launchers and the tests.

    python -m scripts.images name train      -> sagemaker-classifier-train
    python -m scripts.images tag             -> the git short SHA (or "latest" outside git)
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


def ecr_registry(account: str, region: str) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{suffix}"


def ecr_image_uri(account: str, region: str, kind: str, tag: str = LATEST) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>``."""
    return f"{ecr_registry(account, region)}/{repository(kind)}:{tag}"


def main(argv: list[str]) -> None:
    match argv:
        case ["name", kind]:
            print(repository(kind))
        case ["tag"]:
            print(git_tag())
        case _:
            sys.exit("usage: python -m scripts.images name train|serve | tag")


if __name__ == "__main__":
    main(sys.argv[1:])
