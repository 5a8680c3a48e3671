"""Amazon ECR: registry names, repositories, Docker login credentials, and pushed images pinned to digests.

Jobs and models run an image pinned to its digest, so they record exactly which build they ran,
even when ``latest`` moves later, and a missing image is reported before any job or model is
created. ``make push`` (``scripts.containers.push``) creates the repositories and logs in here.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from scripts.aws.settings import AwsContext, LaunchError
from scripts.containers import images


def ecr_registry(account: str, region: str) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com`` (``.com.cn`` in the China regions)."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{suffix}"


def decode_authorization_token(token: str) -> tuple[str, str]:
    """ECR's base64 ``user:password`` token -> ``(user, password)`` (the user is ``AWS``)."""
    user, _, password = base64.b64decode(token).decode().partition(":")
    if not password:
        raise ValueError("the ECR authorization token has no password part")
    return user, password


def login_credentials(ecr) -> tuple[str, str]:
    """``(user, password)`` from ``GetAuthorizationToken``: what ``aws ecr get-login-password`` prints."""
    return decode_authorization_token(
        ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    )


def ensure_repositories(ecr, names: Iterable[str]) -> list[str]:
    """Creates the repositories that do not exist yet; returns the names it created."""
    created = []
    for name in names:
        try:
            ecr.describe_repositories(repositoryNames=[name])
        except ecr.exceptions.RepositoryNotFoundException:
            ecr.create_repository(repositoryName=name, imageScanningConfiguration={"scanOnPush": True})
            created.append(name)
    return created


def pinned_image_uri(ecr, account: str, region: str, kind: str, tag: str = images.LATEST) -> str:
    """``<registry>/<repository>@sha256:...`` of the ``train`` or ``serve`` image pushed as ``tag``."""
    repository = images.repository(kind)
    try:
        found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except (ecr.exceptions.RepositoryNotFoundException, ecr.exceptions.ImageNotFoundException) as error:
        raise LaunchError(
            f"image {repository}:{tag} is not in ECR ({ecr_registry(account, region)}): "
            "run `make build push` first, or choose another IMAGE_TAG"
        ) from error
    digest = found["imageDetails"][0]["imageDigest"]
    return f"{ecr_registry(account, region)}/{repository}@{digest}"


def image_for(context: AwsContext, kind: str, tag: str = images.LATEST) -> str:
    """The account's pushed ``train`` or ``serve`` image, pinned to its digest."""
    return pinned_image_uri(context.client("ecr"), context.account, context.config.region, kind, tag)
