"""Image decoding and the evaluation transform, shared by training and serving.

The serving image has Pillow and numpy but neither torchvision nor (by default) torch, so the
evaluation transform is written here with Pillow and numpy alone (``eval_array``); the trainer
evaluates through the very same functions (``eval_transform`` wraps the array in a tensor), which
makes served predictions identical to the trainer's evaluation.
The configuration travels inside the model artifact as ``preprocess.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The evaluation resize keeps ImageNet's crop ratio: 224 / 256.
CROP_RATIO = 0.875


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything the evaluation transform needs; saved with the model."""

    image_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    channels: str = field(default="RGB")

    @classmethod
    def for_image_size(cls, image_size: int) -> PreprocessConfig:
        """The config for a crop of ``image_size``, resized first as ImageNet models expect."""
        return cls(image_size=image_size, resize_size=round(image_size / CROP_RATIO))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> PreprocessConfig:
        data = json.loads(Path(path).read_text())
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown preprocessing keys {sorted(unknown)}")
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)


_INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def to_rgb(image: Image.Image) -> Image.Image:
    """Decodes any Pillow image to 8-bit RGB: EXIF orientation applied, first frame only.

    Transparent images are laid on white (as browsers show them); 16-bit and float
    grayscale are scaled to 8 bits rather than clipped; CMYK and palette images convert.
    """
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(source: str | Path | BinaryIO, max_pixels: int | None = None) -> Image.Image:
    """Opens an image (a path or a binary file object) and decodes it fully to RGB.

    Errors surface here, not later. With ``max_pixels``, a larger image is refused from its
    header, before it is decoded (a decompression bomb), with ``Image.DecompressionBombError``.
    """
    with Image.open(source) as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise Image.DecompressionBombError(
                f"image of {image.width}x{image.height} = {image.width * image.height} pixels "
                f"exceeds the limit of {max_pixels} pixels"
            )
        image.load()
        return to_rgb(image)


def resize_shorter_side(image: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Resizes so the shorter side is ``size``, keeping the aspect ratio (as torchvision's Resize)."""
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    if (new_width, new_height) == (width, height):
        return image
    return image.resize((new_width, new_height), _INTERPOLATIONS[interpolation])


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Crops the central ``size`` x ``size`` square, padding with black if the image is smaller."""
    width, height = image.size
    if width < size or height < size:
        padded = Image.new(image.mode, (max(width, size), max(height, size)))
        padded.paste(image, ((padded.width - width) // 2, (padded.height - height) // 2))
        image, (width, height) = padded, padded.size
    left = round((width - size) / 2.0)
    top = round((height - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def normalize(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """An RGB image as a normalised CHW float32 array (float32 arithmetic throughout)."""
    array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    mean_array = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_array = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return (array.transpose(2, 0, 1) - mean_array) / std_array


def eval_array(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """The evaluation transform: RGB, resize, centre crop, normalise -> CHW float32 array."""
    image = resize_shorter_side(to_rgb(image), config.resize_size, config.interpolation)
    return normalize(center_crop(image, config.image_size), config.mean, config.std)


def eval_transform(image: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """``eval_array`` as a CHW float tensor (for the trainer's loaders and the torch engine)."""
    import torch  # here, not above: serving without torch imports this module too

    return torch.from_numpy(eval_array(image, config))


class EvalTransform:
    """``eval_transform`` bound to a config, usable as a dataset transform (picklable)."""

    def __init__(self, config: PreprocessConfig):
        self.config = config

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return eval_transform(image, self.config)
