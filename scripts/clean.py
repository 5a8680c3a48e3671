"""``make clean``: remove what the tools made, and say what goes.

    python -m scripts.clean [--runs runs] [--engine-data ask|yes|no]
    make clean [CONFIRM=yes|no]

1. ``runs/``: the outputs of the demo and of local runs, and the AWS launchers' records;
2. old image tags: every tag of the project's images but ``latest`` and the current git SHA, and
   old offline base images (``scripts.containers.prune``), in the engine that answers; else in the
   private engine, started for it and stopped again;
3. the private engine's data under ``~/.cache/sagemaker-classifier/docker`` (every image and build
   cache it holds), only when confirmed: a prompt, or ``--engine-data yes`` (``CONFIRM=yes``) for
   scripts. Never under a running engine: it serves another command, so it is named and left alone
   (``make engine-stop``, then ``make clean`` again). Then step 2 has nothing to do there.

The virtual environments stay (``rm -rf .venv`` removes them). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from scripts import REPO_ROOT
from scripts.containers import images, prune
from scripts.engine import dockerd, engine_data
from scripts.engine.client import candidates
from scripts.engine.engine_data import Removal
from scripts.engine.errors import EngineUnavailable

LAST_TRAINING_JOB = Path("aws") / "last-training-job.json"  # under runs/ (scripts.aws.settings)


def human_size(size: int) -> str:
    """``1536`` -> ``1.5 KB``; decimal units as ``du -h --si`` and Docker print them."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def confirmed(choice: str, question: str, ask: Callable[[str], str] = input,
              interactive: bool | None = None) -> bool:
    """``yes``/``no`` as given; ``ask``: the user's answer at a terminal, and no without one."""
    if choice in ("yes", "no"):
        return choice == "yes"
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        print(f"{question} Not asked: no terminal (make clean CONFIRM=yes removes it).")
        return False
    return ask(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def remove_runs(runs: Path) -> None:
    """Removes ``runs``, printing each of its entries with its size."""
    if not runs.is_dir():
        return
    for entry in sorted(runs.iterdir()):
        print(f"removed {entry} ({human_size(engine_data.size_of([entry]))})")
        if entry == runs / LAST_TRAINING_JOB.parent and (runs / LAST_TRAINING_JOB).is_file():
            try:
                job = json.loads((runs / LAST_TRAINING_JOB).read_text())["training_job"]
                print(f"  it recorded training job {job}: make deploy TRAINING_JOB={job} still deploys it")
            except (ValueError, KeyError, TypeError):
                pass
    shutil.rmtree(runs)


def docker_client(environ=os.environ) -> str | None:
    """Any Docker client (removing tags needs no BuildKit): ``$DOCKER``, else the first found."""
    if environ.get("DOCKER"):
        return environ["DOCKER"] if os.access(environ["DOCKER"], os.X_OK) else None
    found = candidates(environ)
    return found[0] if found else None


def engine_for_tags(
    private: dockerd.PrivateEngine, private_data_goes: bool
) -> tuple[dockerd.Engine | None, str]:
    """The engine whose tags to clean, or None and why not. The private engine is started only when
    it is stopped, has data, and that data is not about to be removed anyway."""
    docker = docker_client()
    if docker is None:
        return None, "no Docker client"
    if dockerd.engine_answers(docker, None):
        return dockerd.Engine(docker), ""
    if engine_data.running_pid(private) and dockerd.engine_answers(docker, private.host):
        return dockerd.Engine(docker, private.host), ""
    if private_data_goes or not (private.root / "data").is_dir():
        return None, "no Docker engine runs, and the private engine has no images to keep"
    try:
        return dockerd.connect(private), ""
    except EngineUnavailable as error:
        return None, str(error)


def remove_old_tags(engine: dockerd.Engine) -> None:
    current = images.git_tag()
    old = prune.old_references(prune.listed_references(engine), prune.kept_tags(current))
    refused = prune.remove_tags(engine, old)
    for reference in old:
        print(f"image tag {reference}: {refused.get(reference, 'removed')}")
    if not old:
        print(f"image tags: none old (kept: {images.LATEST} and {current})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "runs", help="the tools' output folder")
    parser.add_argument("--engine-data", choices=("ask", "yes", "no"), default="ask",
                        help="remove the private Docker engine's data (default: ask at a terminal)")
    args = parser.parse_args(argv)

    private = dockerd.PrivateEngine()
    outputs = engine_data.engine_outputs(private)
    size = human_size(engine_data.size_of(outputs))
    data_goes = bool(outputs) and confirmed(
        args.engine_data,
        f"Remove the private Docker engine's data in {private.root} ({size}: every image and build "
        "cache it holds; rebuilding takes minutes)?",
    )
    remove_runs(args.runs)

    engine, why_not = engine_for_tags(private, data_goes)
    if engine is None:
        print(f"image tags: not checked ({why_not})")
    else:
        try:
            remove_old_tags(engine)
        finally:
            dockerd.disconnect(engine)  # stops the private engine only if this run started it

    action = engine_data.removal(bool(outputs), data_goes, engine_data.running_pid(private))
    if action is Removal.REMOVE:
        for path in engine_data.remove_engine_outputs(private):
            print(f"removed {path}")
    elif action is Removal.ENGINE_RUNNING:
        pid = engine_data.running_pid(private)
        print(f"private engine data in {private.root} {action.value} (pid {pid}, perhaps for another "
              "command): make engine-stop, then make clean again", file=sys.stderr)
        return 1
    elif action is Removal.KEEP:
        print(f"private engine data in {private.root}: {action.value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
