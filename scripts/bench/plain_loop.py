"""The anchor of the training benchmark: a plain torchvision training loop, as a user would write it.

    python -m scripts.bench.plain_loop --data DIR [--model-name resnet50] [--epochs 10] [--batch-size 64]
        [--learning-rate 0.001] [--optimizer adamw] [--image-size 48] [--workers 0]

``torchvision.datasets.ImageFolder`` (resize, centre crop, normalise: no augmentation), a
torchvision ResNet from a random initialisation, cross-entropy, the optimizer at a constant
learning rate, ``--epochs`` passes over ``train/``, then the accuracy on ``test/``. No validation,
no checkpoints, no hooks, no toolkit, no export. It prints one JSON line: test accuracy, epoch
times, and seconds from the process's start to the first step and to the end. Nothing here
imports the trainer: it is what the trainer is measured against.
"""

from __future__ import annotations

import argparse
import json
import time

import psutil
import torch
from torch import nn
from torchvision import datasets, models, transforms

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def since_start() -> float:
    """Seconds since this process started (its imports included)."""
    return time.time() - psutil.Process().create_time()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="a folder holding train/ and test/ ImageFolders")
    parser.add_argument("--model-name", default="resnet50")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    transform = transforms.Compose([
        transforms.Resize(args.image_size),
        transforms.CenterCrop(args.image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    train_set = datasets.ImageFolder(f"{args.data}/train", transform)
    test_set = datasets.ImageFolder(f"{args.data}/test", transform)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=args.batch_size, num_workers=args.workers)
    model = models.get_model(args.model_name, weights=None, num_classes=len(train_set.classes))
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(), lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay
        )
    criterion = nn.CrossEntropyLoss()

    first_step_s, epoch_s = None, []
    for _ in range(args.epochs):
        model.train()
        started = time.monotonic()
        for images, targets in train_loader:
            if first_step_s is None:
                first_step_s = since_start()
            loss = criterion(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_s.append(round(time.monotonic() - started, 3))

    model.eval()
    correct = 0
    started = time.monotonic()
    with torch.no_grad():
        for images, targets in test_loader:
            correct += (model(images).argmax(dim=1) == targets).sum().item()
    print(json.dumps({
        "test_accuracy": correct / len(test_set),
        "first_step_s": round(first_step_s or 0.0, 3),
        "epoch_s": epoch_s,
        "test_s": round(time.monotonic() - started, 3),
        "total_s": round(since_start(), 3),
        "threads": torch.get_num_threads(),
    }), flush=True)


if __name__ == "__main__":
    main()
