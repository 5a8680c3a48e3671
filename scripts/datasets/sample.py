"""Generate a small, learnable ImageFolder dataset with train/valid/test splits.

No dataset can be downloaded on the build machines, so the demo and the tests use this.
Each class is a coloured shape on a noisy background, named like dogImages' folders
(``001.Affenpinscher``), so class-name parsing is exercised too. Deterministic per seed.

    python scripts/datasets/sample.py OUT_DIR [--classes 3] [--train 24] [--valid 8] [--test 8] [--size 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BREEDS = (
    "Affenpinscher", "Afghan_hound", "Airedale_terrier", "Akita", "Alaskan_malamute",
    "American_eskimo_dog", "American_foxhound", "American_staffordshire_terrier",
    "American_water_spaniel", "Anatolian_shepherd_dog",
)
SPLITS = ("train", "valid", "test")


def class_folder_names(num_classes: int) -> list[str]:
    """``001.Affenpinscher``, ``002.Afghan_hound``, ... (``011.Breed_11`` past the list)."""
    names = [BREEDS[i] if i < len(BREEDS) else f"Breed_{i + 1}" for i in range(num_classes)]
    return [f"{i + 1:03d}.{name}" for i, name in enumerate(names)]


def _class_colour(index: int, num_classes: int) -> tuple[int, int, int]:
    hue = index / max(num_classes, 1)
    # A simple hue wheel: well-separated, saturated colours.
    r, g, b = (
        int(255 * max(0.0, min(1.0, abs((hue * 6 + shift) % 6 - 3) - 1))) for shift in (0, 4, 2)
    )
    return r, g, b


def make_image(class_index: int, num_classes: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One sample of a class: its coloured disc at a random place and scale on grey noise."""
    noise = rng.integers(60, 196, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise, mode="RGB")
    draw = ImageDraw.Draw(image)
    radius = int(size * rng.uniform(0.25, 0.4))
    cx, cy = (int(rng.uniform(radius, size - radius)) for _ in range(2))
    colour = _class_colour(class_index, num_classes)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    return image


def make_dataset(
    root: Path,
    num_classes: int = 3,
    counts: dict[str, int] | None = None,
    size: int = 64,
    seed: int = 0,
    image_format: str = "JPEG",
) -> Path:
    """Writes ``root/{train,valid,test}/<class folder>/<n>.jpg`` and returns ``root``."""
    counts = counts or {"train": 24, "valid": 8, "test": 8}
    rng = np.random.default_rng(seed)
    suffix = {"JPEG": "jpg", "PNG": "png"}[image_format]
    for split in SPLITS:
        for class_index, folder in enumerate(class_folder_names(num_classes)):
            target = Path(root) / split / folder
            target.mkdir(parents=True, exist_ok=True)
            for n in range(counts[split]):
                image = make_image(class_index, num_classes, size, rng)
                image.save(target / f"{n:04d}.{suffix}", image_format)
    return Path(root)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--train", type=int, default=24, help="images per class in train/")
    parser.add_argument("--valid", type=int, default=8, help="images per class in valid/")
    parser.add_argument("--test", type=int, default=8, help="images per class in test/")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = {"train": args.train, "valid": args.valid, "test": args.test}
    root = make_dataset(args.out_dir, args.classes, counts, args.size, args.seed)
    total = sum(counts.values()) * args.classes
    print(f"wrote {total} images of {args.classes} classes to {root}")


if __name__ == "__main__":
    main()
