"""Find a pushed image in Amazon ECR and pin it to its digest (``make push`` lives in ``scripts.ecr``).

Jobs and models then record exactly which build they ran, even when ``latest`` moves later, and
a missing image is reported before any job or model is created.
"""

from __future__ import annotations

from scripts import images
from scripts.aws_config import AwsContext, LaunchError


def pinned_image_uri(ecr, account: str, region: str, kind: str, tag: str = images.LATEST) -> str:
    """``<registry>/<repository>@sha256:...`` of the ``train`` or ``serve`` image pushed as ``tag``."""
    repository = images.repository(kind)
    try:
        found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except (ecr.exceptions.RepositoryNotFoundException, ecr.exceptions.ImageNotFoundException) as error:
        raise LaunchError(
            f"image {repository}:{tag} is not in ECR ({images.ecr_registry(account, region)}): "
            "run `make build push` first, or choose another IMAGE_TAG"
        ) from error
    digest = found["imageDetails"][0]["imageDigest"]
    return f"{images.ecr_registry(account, region)}/{repository}@{digest}"


def image_for(context: AwsContext, kind: str, tag: str = images.LATEST) -> str:
    """The account's pushed ``train`` or ``serve`` image, pinned to its digest."""
    return pinned_image_uri(context.client("ecr"), context.account, context.config.region, kind, tag)
