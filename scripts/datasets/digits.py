"""A small real image dataset for benchmarks and tests: the UCI handwritten digits, as an ImageFolder.

1,797 scans of handwritten digits (8x8, 17 grey levels, 10 classes) from the UCI repository, as
scikit-learn ships them inside its wheel (``sklearn/datasets/data/digits.csv.gz``). Nothing of it
is in this repository: the wheel is fetched from PyPI with pip (no install, any platform's pip
works), the file's SHA-256 is checked, and the CSV is cached under ``CACHE_DIR/datasets``.

    python -m scripts.datasets.digits OUT_DIR [--image-size 48] [--seed 0]

writes ``OUT_DIR/{train,valid,test}/<class>/<n>.png`` (70/15/15 %, stratified, deterministic per
seed), each scan scaled up to ``--image-size`` pixels and stored as RGB, with class folders
``000.zero`` ... ``009.nine``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from scripts import CACHE_DIR

WHEEL = "scikit-learn==1.5.2"
MEMBER = "sklearn/datasets/data/digits.csv.gz"
MEMBER_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
CACHE = CACHE_DIR / "datasets" / "digits.csv.gz"
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_FRACTIONS = {"train": 0.70, "valid": 0.15, "test": 0.15}
MAX_GREY = 16  # the scans' grey levels are 0..16


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_digits_csv(cache: Path = CACHE) -> Path:
    """The digits CSV (gzipped), from the cache or taken out of scikit-learn's wheel on PyPI."""
    if cache.is_file() and sha256_of(cache) == MEMBER_SHA256:
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--platform", "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp",
            "--dest", scratch, WHEEL,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {WHEEL} from PyPI for the digits: {result.stderr[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            partial = Path(scratch) / "digits.csv.gz"
            partial.write_bytes(wheel.read(MEMBER))
        if sha256_of(partial) != MEMBER_SHA256:
            raise RuntimeError(f"{MEMBER} in {wheels[0].name} is not the expected file (SHA-256 differs)")
        partial.replace(cache)
    return cache


def load_digits(cache: Path = CACHE) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: uint8 scans of shape (1797, 8, 8) with grey levels 0..16, and their digits."""
    with gzip.open(fetch_digits_csv(cache), "rt") as stream:
        table = np.loadtxt(stream, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 8, 8).astype(np.uint8), table[:, -1]


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Stratified train/valid/test indices: each class divided by ``SPLIT_FRACTIONS``."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[int]] = {split: [] for split in SPLIT_FRACTIONS}
    for digit in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == digit))
        train_end = round(len(members) * SPLIT_FRACTIONS["train"])
        valid_end = train_end + round(len(members) * SPLIT_FRACTIONS["valid"])
        chosen["train"] += members[:train_end].tolist()
        chosen["valid"] += members[train_end:valid_end].tolist()
        chosen["test"] += members[valid_end:].tolist()
    return {split: np.sort(np.array(indices)) for split, indices in chosen.items()}


def class_folder(digit: int) -> str:
    return f"{digit:03d}.{NAMES[digit]}"


def make_digits_dataset(root: Path, image_size: int = 48, seed: int = 0) -> Path:
    """Writes the ImageFolder (PNG, RGB, ``image_size`` px) and returns ``root``."""
    images, labels = load_digits()
    for split, indices in split_indices(labels, seed).items():
        for index in indices:
            target = Path(root) / split / class_folder(int(labels[index]))
            target.mkdir(parents=True, exist_ok=True)
            grey = (images[index].astype(np.float32) * (255 / MAX_GREY)).round().astype(np.uint8)
            scan = Image.fromarray(grey, mode="L").resize((image_size, image_size), Image.BILINEAR)
            scan.convert("RGB").save(target / f"{index:04d}.png")
    return Path(root)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = make_digits_dataset(args.out_dir, args.image_size, args.seed)
    counts = {split: sum(1 for _ in (root / split).rglob("*.png")) for split in SPLIT_FRACTIONS}
    print(f"wrote the digits to {root}: {counts}")


if __name__ == "__main__":
    main()
