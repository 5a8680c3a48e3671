"""Push the images to Amazon ECR (``make push``): create missing repositories, log in, tag, push.

    python -m scripts.ecr push [train] [serve] [--account ID] [--region REGION] [--tag TAG ...]

The account comes from ``--account`` / ``AWS_ACCOUNT_ID`` or STS, the region from ``--region`` /
the AWS configuration (``AWS_REGION``, ``~/.aws/config``). Logging in is the
``aws ecr get-login-password | docker login --username AWS --password-stdin`` way, through boto3.
Pure helpers build names and decode the token; the edges talk to boto3 and Docker.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
from collections.abc import Iterable

from scripts import docker_engine, images


def decode_authorization_token(token: str) -> tuple[str, str]:
    """ECR's base64 ``user:password`` token -> ``(user, password)`` (the user is ``AWS``)."""
    user, _, password = base64.b64decode(token).decode().partition(":")
    if not password:
        raise ValueError("the ECR authorization token has no password part")
    return user, password


def push_plan(registry: str, kinds: Iterable[str], tags: Iterable[str]) -> list[tuple[str, str]]:
    """``(local image, remote image)`` pairs: every kind under every tag."""
    return [
        (f"{images.repository(kind)}:{tag}", f"{registry}/{images.repository(kind)}:{tag}")
        for kind in kinds
        for tag in tags
    ]


# ---------------------------------------------------------------- AWS edges


def resolve_account_and_region(session, account: str | None, region: str | None) -> tuple[str, str]:
    """Explicit values first, then the environment / AWS configuration, then STS for the account."""
    region = region or os.environ.get("AWS_REGION") or session.region_name
    if not region:
        raise SystemExit("no AWS region: set REGION=..., AWS_REGION or a region in ~/.aws/config")
    account = account or os.environ.get("AWS_ACCOUNT_ID")
    if not account:
        account = session.client("sts", region_name=region).get_caller_identity()["Account"]
    return account, region


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


def login_credentials(ecr) -> tuple[str, str]:
    """``(user, password)`` from ``GetAuthorizationToken``: what ``aws ecr get-login-password`` prints."""
    return decode_authorization_token(
        ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    )


# ---------------------------------------------------------------- Docker edges


def docker_login(engine: docker_engine.Engine, registry: str, user: str, password: str) -> None:
    engine.run("login", "--username", user, "--password-stdin", registry, input=password)


def push_images(engine: docker_engine.Engine, plan: list[tuple[str, str]]) -> None:
    for local, remote in plan:
        if not engine.image_exists(local):
            raise SystemExit(f"{local} is not built here: run `make build` first")
        engine.run("tag", local, remote)
        print(f"[push] {remote}", file=sys.stderr, flush=True)
        engine.run("push", remote, capture=False)


def push(
    ecr, engine: docker_engine.Engine, registry: str, kinds: Iterable[str], tags: Iterable[str]
) -> list[str]:
    """Creates missing repositories, logs Docker in to ``registry`` and pushes; returns the remote images."""
    kinds, tags = list(kinds), list(tags)
    for name in ensure_repositories(ecr, [images.repository(kind) for kind in kinds]):
        print(f"[push] created ECR repository {name}", file=sys.stderr)
    user, password = login_credentials(ecr)
    docker_login(engine, registry, user, password)
    plan = push_plan(registry, kinds, tags)
    push_images(engine, plan)
    return [remote for _, remote in plan]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["push"])
    parser.add_argument("kinds", nargs="*", metavar="train|serve", help="the images (default: both)")
    parser.add_argument("--account", default=os.environ.get("ACCOUNT") or None)
    parser.add_argument("--region", default=os.environ.get("REGION") or None)
    parser.add_argument("--tag", action="append", help="tags (default: the git short SHA and latest)")
    args = parser.parse_args()
    kinds = args.kinds or list(images.REPOSITORIES)
    tags = args.tag or list(dict.fromkeys([images.git_tag(), images.LATEST]))

    import boto3  # only this command needs it
    import botocore.exceptions

    try:
        session = boto3.Session()
        account, region = resolve_account_and_region(session, args.account, args.region)
        ecr = session.client("ecr", region_name=region)
        with docker_engine.engine_session() as engine:
            pushed = push(ecr, engine, images.ecr_registry(account, region), kinds, tags)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        sys.exit(f"AWS: {error}")
    except docker_engine.EngineUnavailable as error:
        sys.exit(f"docker engine: {error}")
    except subprocess.CalledProcessError as error:
        sys.exit(f"push failed: {' '.join(error.cmd[:3])} exited {error.returncode}: {error.stderr or ''}")
    print("\n".join(pushed))


if __name__ == "__main__":
    main()
