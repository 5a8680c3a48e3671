"""Amazon ECR helpers for ``make push`` and the launchers; image names come from ``scripts.images``.

    python -m scripts.ecr ensure-repos        create the train and serve repositories if missing
    python -m scripts.ecr login               docker login to the account's registry
    python -m scripts.ecr registry            print <account>.dkr.ecr.<region>.amazonaws.com
    python -m scripts.ecr uri train|serve [TAG]   print the image URI (default tag: latest)
    python -m scripts.ecr resolve train|serve [TAG]   print the URI pinned to the pushed digest

The account and region come from the AWS configuration (see ``scripts.aws_config``).
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys

from scripts import aws_config, images
from scripts.aws_config import AwsContext, LaunchError


def ensure_repositories(ecr, names: list[str]) -> list[str]:
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
    """``<registry>/<repository>@sha256:...`` of the image pushed as ``tag``.

    Jobs and models then record exactly which build they ran, even when ``latest`` moves later;
    a missing image is reported here, before any job is created.
    """
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


def docker_login(ecr, docker: str = "docker") -> str:
    """Logs the Docker client in to the registry with an ECR token; returns the registry."""
    authorization = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(authorization["authorizationToken"]).decode().split(":", 1)
    registry = authorization["proxyEndpoint"].removeprefix("https://")
    subprocess.run(
        [docker, "login", "--username", user, "--password-stdin", registry],
        input=password, text=True, check=True,
    )
    return registry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    aws_config.add_config_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ensure-repos", help="create the ECR repositories if missing")
    login = commands.add_parser("login", help="docker login to the registry")
    login.add_argument("--docker", default="docker", help="the docker client to use")
    commands.add_parser("registry", help="print the registry host")
    for name in ("uri", "resolve"):
        command = commands.add_parser(name, help=f"print an image URI ({name})")
        command.add_argument("kind", choices=sorted(images.REPOSITORIES))
        command.add_argument("tag", nargs="?", default=images.LATEST)
    args = parser.parse_args(argv)
    try:
        context: AwsContext = aws_config.connect(args)
        region, account = context.config.region, context.account
        ecr = context.client("ecr")
        match args.command:
            case "ensure-repos":
                names = [images.repository(kind) for kind in sorted(images.REPOSITORIES)]
                for name in ensure_repositories(ecr, names):
                    print(f"created ECR repository {name}", file=sys.stderr)
            case "login":
                print(f"logged in to {docker_login(ecr, args.docker)}", file=sys.stderr)
            case "registry":
                print(images.ecr_registry(account, region))
            case "uri":
                print(images.ecr_image_uri(account, region, args.kind, args.tag))
            case "resolve":
                print(pinned_image_uri(ecr, account, region, args.kind, args.tag))
    except (*aws_config.USER_ERRORS, subprocess.CalledProcessError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
