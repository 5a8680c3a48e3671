"""Start-up at scale: from job start to the first training step on 100,000 images.

A folder of 100,000 small PNGs (100 classes; 80/10/10 % train/valid/test) is generated in seconds
(a few encodings per class, written as bytes), then the trainer starts on it under the training
toolkit and is stopped as soon as it logs its first training batch. Beside it, the cost of the
pass the trainer no longer makes: decoding every image before the first epoch (what start-up
used to do to find unreadable images), measured on the same files with one thread per core.
"""

from __future__ import annotations

import io
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from classifier import dataset, sagemaker_env
from classifier.preprocessing import load_image
from scripts.local.train import start_training, stop_training

IMAGES = 100_000
CLASSES = 100
IMAGE_SIZE = 16
VARIANTS_PER_CLASS = 4
SPLIT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}
# A small network: start-up does not depend on the model's size beyond building it.
HYPERPARAMETERS = {"model-name": "resnet18", "pretrained": False, "image-size": IMAGE_SIZE, "epochs": 1}
TIMEOUT_S = 1800

_LISTED = re.compile(r"listed in ([\d.]+) s")


def generate_image_folder(root: Path, images: int = IMAGES, classes: int = CLASSES, seed: int = 0) -> Path:
    """``root/{train,valid,test}/<class>/<n>.png``: ``images`` PNGs of ``IMAGE_SIZE`` px."""
    rng = np.random.default_rng(seed)
    per_class = images // classes
    for index in range(classes):
        variants = []
        for _ in range(VARIANTS_PER_CLASS):
            pixels = rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            variants.append(buffer.getvalue())
        start = 0
        for split, fraction in SPLIT_FRACTIONS.items():
            count = round(per_class * fraction)
            folder = root / split / f"{index:03d}.class_{index}"
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(start, start + count):
                (folder / f"{number:05d}.png").write_bytes(variants[number % VARIANTS_PER_CLASS])
            start += count
    return root


@dataclass
class StartupResult:
    images: int
    generate_s: float
    listed_s: float | None
    first_batch_s: float | None
    decode_pass_s: float
    cores: int


def time_to_first_batch(data: Path, out: Path) -> tuple[float | None, float | None]:
    """(seconds from starting the toolkit to the trainer's first batch, the listing's own seconds)."""
    started = time.monotonic()
    process = start_training(data, out, HYPERPARAMETERS)
    first_batch, listed = None, None
    try:
        for line in process.stdout:
            if match := _LISTED.search(line):
                listed = float(match.group(1))
            if "first training batch ready" in line:
                first_batch = time.monotonic() - started
                break
            if time.monotonic() - started > TIMEOUT_S:
                break
    finally:
        stop_training(process, signal.SIGKILL)
        process.communicate()
    return first_batch, listed


def decode_pass_seconds(data: Path) -> float:
    """Seconds to decode every image once, one thread per core (the up-front check that is gone)."""
    paths = [path for split in ("train", "valid", "test") for path in dataset.list_images(data / split)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=sagemaker_env.num_cpus()) as pool:
        for _ in pool.map(load_image, paths, chunksize=256):
            pass
    return time.monotonic() - started


def measure(workdir: Path, images: int = IMAGES) -> StartupResult:
    started = time.monotonic()
    data = generate_image_folder(workdir / "many-images", images)
    generate_s = time.monotonic() - started
    first_batch_s, listed_s = time_to_first_batch(data, workdir / "startup-run")
    return StartupResult(images, generate_s, listed_s, first_batch_s, decode_pass_seconds(data),
                         sagemaker_env.num_cpus() or os.cpu_count() or 1)


def verdict(result: StartupResult) -> str:
    first = "not reached" if result.first_batch_s is None else f"reached in **{result.first_batch_s:.0f} s**"
    return (f"On {result.images:,} images the first training step is {first} from job start; the decoding "
            f"pass that start-up no longer makes would have added {result.decode_pass_s:.0f} s.")


def markdown(result: StartupResult) -> str:
    first = "did not start" if result.first_batch_s is None else f"**{result.first_batch_s:.1f} s**"
    listed = "?" if result.listed_s is None else f"{result.listed_s:.1f} s"
    per_image_ms = 1000 * result.decode_pass_s / result.images
    return f"""## Start-up on {result.images:,} images

| | seconds |
| --- | ---: |
| job start (the toolkit starts) to the first training batch | {first} |
| of which listing the files (the dataset rules, no image opened) | {listed} |
| decoding every image once, {result.cores} threads (start-up used to add it) | {result.decode_pass_s:.1f} |

{result.images:,} PNGs of {IMAGE_SIZE} px in {CLASSES} classes (generated in {result.generate_s:.0f} s),
`{" ".join(f"--{k} {str(v).lower()}" for k, v in HYPERPARAMETERS.items())}`. Nothing is decoded
before the first step: unreadable images are found, counted and skipped as they are loaded. The
removed pass cost {per_image_ms:.2f} ms per image here; it grows with the image (a dogImages JPEG
decodes in several ms), so on ImageNet-sized data (1.3 million images) it held the first step back
by tens of minutes to hours, and in FastFile mode it read the whole dataset from S3 first.
"""
