"""The trainer's hyperparameters: their fixed names, defaults, parser and tuning search space.

The names are a contract: SageMaker passes hyperparameters to the training entry as
``--name value`` arguments, the tuner sets ``learning-rate``, ``batch-size`` and ``epochs``,
and the docs and tests use the same spellings. Defaults are a ResNet50 transfer-learning
recipe that fits ImageNet-pretrained fine-tuning (dogImages) and training from scratch (the digits
of ``make bench-train``); the README's table says why each default is what it is. Standard
library only: the launchers import this module.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

MODEL_NAMES = ("resnet18", "resnet34", "resnet50")
FINE_TUNE_POLICIES = ("head", "last-block", "all")
# ``auto``: ``last-block`` from ImageNet weights, ``all`` from a random initialisation.
FINE_TUNE_AUTO = "auto"
AUGMENT_PRESETS = ("none", "light", "standard")  # classifier.augmentation
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "step", "constant")


def str_to_bool(value: str | bool) -> bool:
    """Reads a boolean hyperparameter: SageMaker passes them as strings such as ``True``/``false``."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return number


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value!r}")
    return number


def _optional_seed(value: str) -> int | None:
    return None if value.strip().lower() in ("", "none", "null") else int(value)


def as_sagemaker_strings(values: Mapping[str, object]) -> dict[str, str]:
    """SageMaker passes every hyperparameter as a string (booleans as ``true``/``false``)."""
    return {
        name: (str(value).lower() if isinstance(value, bool) else str(value))
        for name, value in values.items()
    }


def parse_name_value_pairs(args: list[str]) -> dict[str, str]:
    """Reads ``--name value`` pairs (``make ... HP="--epochs 2 --model-name resnet18"``)."""
    if len(args) % 2:
        raise ValueError(f"hyperparameters must come as '--name value' pairs, got {args}")
    pairs = {}
    for name, value in zip(args[::2], args[1::2], strict=True):
        if not name.startswith("--"):
            raise ValueError(f"expected a '--name' before {value!r}, got {name!r}")
        pairs[name[2:]] = value
    return pairs


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the training entry; every option is a hyperparameter name."""
    parser = argparse.ArgumentParser(
        description="Transfer-learning image classifier (ImageFolder train/valid/test) for SageMaker.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model-name", choices=MODEL_NAMES, default="resnet50")
    model.add_argument("--pretrained", type=str_to_bool, default=True,
                       help="start from ImageNet weights (downloaded, or baked into the image)")
    model.add_argument("--weights-path", default=None,
                       help="a local ImageNet state_dict to use instead of downloading one")
    model.add_argument("--fine-tune", choices=(FINE_TUNE_AUTO, *FINE_TUNE_POLICIES), default=FINE_TUNE_AUTO,
                       help="which layers train: the new head only, the last residual block too, or all; "
                            "auto: last-block from ImageNet weights, all from a random initialisation")

    data = parser.add_argument_group("data")
    data.add_argument("--image-size", type=_positive_int, default=224, help="side of the square crop")
    data.add_argument("--batch-size", type=_positive_int, default=64,
                      help="the global batch: split evenly among the training processes (GPUs x hosts)")
    data.add_argument("--augment", choices=AUGMENT_PRESETS, default="light",
                      help="training augmentation: none, light (random shift, no flip: any dataset), "
                           "standard (random resized crop and flip: natural photos)")
    data.add_argument("--workers", type=_non_negative_int, default=None,
                      help="data-loader workers (default: SM_NUM_CPUS with a GPU or FastFile input, "
                           "0 on a CPU with local files)")
    data.add_argument("--max-bad-image-fraction", type=_fraction, default=0.01,
                      help="fail when more than this fraction of a split's images cannot be read")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=_positive_int, default=10)
    optim.add_argument("--learning-rate", type=_positive_float, default=0.001)
    optim.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--weight-decay", type=float, default=1e-4)
    optim.add_argument("--label-smoothing", type=_fraction, default=0.1)
    optim.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine")
    optim.add_argument("--warmup-epochs", type=_non_negative_int, default=1)
    optim.add_argument("--early-stopping-patience", type=_non_negative_int, default=3,
                       help="stop after this many epochs after warmup without a better validation loss "
                            "(0: never)")
    optim.add_argument("--early-stopping-min-delta", type=_fraction, default=0.01,
                       help="the relative fall in validation loss that counts as better for early stopping")
    optim.add_argument("--gradient-clip-norm", type=_non_negative_float, default=0.0,
                       help="clip the gradients' global L2 norm to this value before each step (0: off)")
    optim.add_argument("--seed", type=_optional_seed, default=None,
                       help="make the run deterministic with this seed")

    scale = parser.add_argument_group("data-parallel training (several GPUs or hosts)")
    scale.add_argument("--distributed-timeout", type=_positive_float, default=1800.0,
                       help="seconds a training process waits for the others (joining, each exchange, "
                            "checkpoints) before the job fails naming the one missing")

    debug = parser.add_argument_group("debugging")
    debug.add_argument("--debugger", type=str_to_bool, default=True,
                       help="run the local smdebug hook when SageMaker gives no Debugger config")
    debug.add_argument("--debugger-save-interval", type=_positive_int, default=100,
                       help="steps between saved weights, biases and gradients (the loss: every step) "
                            "when no SageMaker Debugger config is given")
    debug.add_argument("--debugger-out-dir", default=None,
                       help="where the local smdebug hook writes (default: <base dir>/output/data/tensors)")
    debug.add_argument("--resource-sample-seconds", type=_positive_float, default=5.0,
                       help="seconds between CPU/GPU/memory samples")

    export = parser.add_argument_group("export (classifier.quantize)")
    export.add_argument("--quantize", type=str_to_bool, default=True,
                        help="also export the best weights as OpenVINO fp32 and int8 models (CPU serving)")
    export.add_argument("--calibration-images", type=_positive_int, default=300,
                        help="training images (never test) that calibrate the int8 quantization")
    return parser


@dataclass(frozen=True)
class ContinuousRange:
    min_value: float
    max_value: float
    scaling: str = "Auto"  # SageMaker's ScalingType: Auto, Linear, Logarithmic, ReverseLogarithmic


@dataclass(frozen=True)
class IntegerRange:
    min_value: int
    max_value: int
    scaling: str = "Auto"


@dataclass(frozen=True)
class CategoricalValues:
    values: tuple[str, ...]


# The tuning search space, defined once: the tuner turns it into SageMaker parameter ranges.
SEARCH_SPACE: dict[str, ContinuousRange | IntegerRange | CategoricalValues] = {
    "learning-rate": ContinuousRange(0.001, 0.1, "Logarithmic"),
    "batch-size": CategoricalValues(("32", "64", "128", "256", "512")),
    "epochs": IntegerRange(2, 10),
}
