"""Download torchvision's ImageNet weights into the torch hub cache at image build time.

    python3 bake_weights.py resnet50 [resnet18 ...]

The files land in ``$TORCH_HOME/hub/checkpoints``, where torchvision looks before downloading,
so the trainer's ``pretrained true`` finds them without internet at training time.
"""

import os
import sys

import torch
from torchvision.models import get_model_weights


def bake(model_name: str) -> str:
    weights = get_model_weights(model_name).DEFAULT
    try:
        weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # an offline build fails here: say what was fetched and where to
        raise SystemExit(f"cannot bake {model_name} weights from {weights.url}: {error}") from error
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for name in sys.argv[1:]:
        print(f"baked {name} ImageNet weights into {bake(name)}")
