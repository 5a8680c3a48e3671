"""Push the images to Amazon ECR (``make push``): create missing repositories, log in, tag, push.

    python -m scripts.containers.push [train] [serve] [--tag TAG ...]

The account and region come from the launchers' AWS settings (``scripts.aws.settings``: options,
``AWS_PROFILE``/``AWS_REGION``, ``launch.toml``), so ``make push`` pushes where ``make train``
looks. Logging in is the ``aws ecr get-login-password | docker login --username AWS
--password-stdin`` way, through boto3.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterable

from scripts.aws import ecr, settings
from scripts.containers import images
from scripts.engine import dockerd
from scripts.engine.errors import EngineUnavailable


def push_plan(registry: str, kinds: Iterable[str], tags: Iterable[str]) -> list[tuple[str, str]]:
    """``(local image, remote image)`` pairs: every kind under every tag."""
    return [
        (f"{images.repository(kind)}:{tag}", f"{registry}/{images.repository(kind)}:{tag}")
        for kind in kinds
        for tag in tags
    ]


def docker_login(engine: dockerd.Engine, registry: str, user: str, password: str) -> None:
    engine.run("login", "--username", user, "--password-stdin", registry, input=password)


def push_images(engine: dockerd.Engine, plan: list[tuple[str, str]]) -> None:
    for local, remote in plan:
        if not engine.image_exists(local):
            raise SystemExit(f"{local} is not built here: run `make build` first")
        engine.run("tag", local, remote)
        print(f"[push] {remote}", file=sys.stderr, flush=True)
        engine.run("push", remote, capture=False)


def push(
    ecr_client, engine: dockerd.Engine, registry: str, kinds: Iterable[str], tags: Iterable[str]
) -> list[str]:
    """Creates missing repositories, logs Docker in to ``registry`` and pushes; returns the remote images."""
    kinds, tags = list(kinds), list(tags)
    for name in ecr.ensure_repositories(ecr_client, [images.repository(kind) for kind in kinds]):
        print(f"[push] created ECR repository {name}", file=sys.stderr)
    user, password = ecr.login_credentials(ecr_client)
    docker_login(engine, registry, user, password)
    plan = push_plan(registry, kinds, tags)
    push_images(engine, plan)
    return [remote for _, remote in plan]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kinds", nargs="*", metavar="train|serve", help="the images (default: both)")
    parser.add_argument("--tag", action="append", help="tags (default: the git short SHA and latest)")
    settings.add_config_arguments(parser)
    args = parser.parse_args(argv)
    unknown = set(args.kinds) - set(images.REPOSITORIES)
    if unknown:
        parser.error(f"unknown image(s) {sorted(unknown)}; choose from {sorted(images.REPOSITORIES)}")
    kinds = args.kinds or list(images.REPOSITORIES)
    tags = args.tag or list(dict.fromkeys([images.git_tag(), images.LATEST]))
    try:
        context = settings.connect(args)
        registry = ecr.ecr_registry(context.account, context.config.region)
        print(f"[push] to {registry}", file=sys.stderr, flush=True)
        with dockerd.engine_session() as engine:
            pushed = push(context.client("ecr"), engine, registry, kinds, tags)
    except settings.USER_ERRORS as error:
        sys.exit(f"error: {error}")
    except EngineUnavailable as error:
        sys.exit(f"docker engine: {error}")
    except subprocess.CalledProcessError as error:
        sys.exit(f"push failed: {' '.join(error.cmd[:3])} exited {error.returncode}: {error.stderr or ''}")
    print("\n".join(pushed))


if __name__ == "__main__":
    main()
