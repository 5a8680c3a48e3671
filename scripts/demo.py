"""``make demo``: the whole story on this machine, in the real containers, as SageMaker runs them.

    python -m scripts.demo [--data path/to/dogImages] [--work runs/demo] [-- --epochs 2 ...]

1. data: a small generated dataset (``scripts.datasets.sample``), or ``--data`` (train/ valid/ test/);
2. build both images (``scripts.containers.build``), tagged as ``make build`` tags them;
3. train in the training container (``docker run IMAGE train``) -> ``WORK/opt_ml/model.tar.gz``;
4. serve that artifact in the serving container (``docker run IMAGE serve``), say which engine
   serves it (the quantized int8 model when its recorded test accuracy allows: ``SERVE_ENGINE=auto``)
   and send one test image per class through the same client a SageMaker endpoint is called with
   (``scripts.aws.invoke``);
5. print the top-5 of each, then stop the container (and the private Docker engine if one was
   started for the demo);
6. write the debugging report of the training run (``scripts.report``) and print its path.
``WORK`` keeps the data, the /opt_ml folder, the artifact and ``report.html``.

Hyperparameters after ``--`` go to the trainer; the generated data gets a quick recipe by default.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from classifier.dataset import SPLITS
from classifier.engines import CHOICE_LOG_PREFIX, INT8
from classifier.hyperparameters import build_parser, parse_name_value_pairs
from scripts.aws import invoke
from scripts.containers import build, images, local_mode
from scripts.datasets import sample
from scripts.engine import dockerd
from scripts.engine.base_image import ensure_base_image
from scripts.engine.errors import EngineUnavailable
from scripts.local.server import free_port
from scripts.report.document import print_outcomes, write_report
from scripts.report.sources import load_local_run

DEFAULT_WORK = Path("runs/demo")
# Random initialisation (no weights can be downloaded on every machine), every layer training.
SAMPLE_HYPERPARAMETERS = {
    "model-name": "resnet18", "pretrained": False, "fine-tune": "all", "epochs": 5, "batch-size": 16,
    "image-size": 32, "optimizer": "adamw", "learning-rate": 0.002, "warmup-epochs": 0, "workers": 1,
    "seed": 0, "debugger-save-interval": 2,
}  # fmt: skip
SAMPLE_CLASSES = 5
TOP_K = 5
STEPS = 6


def step(number: int, text: str) -> None:
    print(f"\n==> [{number}/{STEPS}] {text}", flush=True)


def demo_hyperparameters(real_data: bool, overrides: list[str]) -> dict[str, object]:
    """The generated data's quick recipe (none for real data: the trainer's defaults), then ``overrides``."""
    chosen = {} if real_data else dict(SAMPLE_HYPERPARAMETERS)
    chosen.update(parse_name_value_pairs(overrides))
    build_parser().parse_args([f"--{name}={value}" for name, value in chosen.items()])  # fail early
    return chosen


def one_image_per_class(data: Path) -> list[tuple[str, Path]]:
    """``(class folder, first image)`` of each class in the test split."""
    test_split = data / SPLITS[2]
    samples = []
    for folder in sorted(path for path in test_split.iterdir() if path.is_dir()):
        files = sorted(path for path in folder.iterdir() if path.is_file())
        if files:
            samples.append((folder.name, files[0]))
    return samples


def serving_engine(engine: dockerd.Engine, container: str) -> str:
    """What the serving container's log says about its engine: ``int8 (the reason)``."""
    logs = engine.run("logs", container, check=False)
    lines = f"{logs.stdout or ''}\n{logs.stderr or ''}".splitlines()
    line = next((line for line in lines if CHOICE_LOG_PREFIX in line), None)
    return line.split(CHOICE_LOG_PREFIX, 1)[1].strip() if line else "not named in the container's log"


def run(data: Path | None, work: Path, hyperparameters: dict[str, object]) -> int:
    """The five steps; ``data`` None generates the sample dataset in ``work``. Returns the exit status."""
    started = time.monotonic()
    step(1, "data")
    if data is None:
        shutil.rmtree(work / "data", ignore_errors=True)
        data = sample.make_dataset(work / "data", SAMPLE_CLASSES)
        print(f"generated {SAMPLE_CLASSES} classes of coloured shapes in {data}")
    else:
        print(f"using {data}")

    with dockerd.engine_session() as engine:
        step(2, "build the training and serving images")
        base_image = ensure_base_image(engine, os.environ.get("BASE_IMAGE") or None)
        tags = list(dict.fromkeys([images.git_tag(), images.LATEST]))
        for kind in images.REPOSITORIES:
            build.build_image(engine, kind, tags, base_image)
        step(3, f"train in the training container: {hyperparameters or 'the trainer defaults'}")
        out = work / "opt_ml"
        shutil.rmtree(out, ignore_errors=True)
        trained = local_mode.train_in_container(
            engine, data, out, hyperparameters, image=local_mode.image_name("train", tags[0])
        )
        if trained.returncode != 0:
            print(f"training failed: {(out / 'output' / 'failure').read_text().strip()}", file=sys.stderr)
            return 1
        artifact = out / local_mode.MODEL_TAR
        print(f"artifact: {artifact}")

        step(4, "serve it in the serving container")
        port = free_port()
        image = local_mode.image_name("serve", tags[0])
        with local_mode.serving_container(engine, artifact, port, image) as container:
            url = f"http://127.0.0.1:{port}"
            print(f"healthy at {url}/ping")
            served_by = serving_engine(engine, container)
            quantized = "the quantized int8 model" if served_by.startswith(INT8) else "not the int8 model"
            print(f"serving {quantized}: {served_by}")
            step(5, f"top-{TOP_K} of one test image per class (scripts.aws.invoke, as for an endpoint)")
            for folder, path in one_image_per_class(data):
                top_k = invoke.predict(
                    path.read_bytes(), url=url, content_type=invoke.content_type_for(path), k=TOP_K
                )
                print(f"\n{path.relative_to(data)}  (true class: {folder})")
                print(invoke.format_predictions(top_k))

    step(6, "debugging report of the training run (scripts.report)")
    written = write_report(load_local_run(out), work / "report.html")
    print_outcomes(written)
    print(f"report: {work / 'report.html'}")
    print(f"\ndone in {time.monotonic() - started:.0f} s; data, /opt/ml and model.tar.gz are in {work}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="a dogImages-like folder (default: generate one)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the demo keeps its files")
    parser.add_argument("hyperparameters", nargs=argparse.REMAINDER, help="-- --epochs 2 ...")
    args = parser.parse_args()
    overrides = [item for item in args.hyperparameters if item != "--"]
    if args.data is not None and not args.data.is_dir():
        sys.exit(f"--data {args.data}: no such folder")
    try:
        hyperparameters = demo_hyperparameters(real_data=args.data is not None, overrides=overrides)
        sys.exit(run(args.data, args.work.resolve(), hyperparameters))
    except EngineUnavailable as error:
        sys.exit(f"docker engine: {error}")
    except subprocess.CalledProcessError as error:
        sys.exit(f"demo failed: {' '.join(map(str, error.cmd[:3]))} ... exited {error.returncode}")
    except (invoke.InvokeError, TimeoutError, RuntimeError) as error:
        sys.exit(f"demo failed: {error}")


if __name__ == "__main__":
    main()
