"""Old image tags: which ``make clean`` removes (pure), and removing them from a real engine."""

import uuid

import pytest

from scripts.containers import images, prune
from scripts.engine import base_image

TRAIN, SERVE = images.REPOSITORIES["train"], images.REPOSITORIES["serve"]
REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"


def test_every_tag_of_our_images_but_latest_and_the_current_build_is_old():
    keep = prune.kept_tags("f8e2589")
    references = [
        f"{TRAIN}:latest", f"{TRAIN}:f8e2589", f"{TRAIN}:5dafb50", f"{TRAIN}:test", f"{SERVE}:latest",
        f"{SERVE}:f8e2589", f"{SERVE}:launch", f"{SERVE}:5dafb50",
        f"{REGISTRY}/{TRAIN}:latest", f"{REGISTRY}/{TRAIN}:5dafb50",  # make push's copies
        "python:3.11-slim-bookworm", "ubuntu:24.04", "my-sagemaker-classifier-train-fork:old",
        f"{TRAIN}:<none>", "<none>:<none>",
    ]
    assert prune.old_references(references, keep) == sorted([
        f"{TRAIN}:5dafb50", f"{TRAIN}:test", f"{SERVE}:launch", f"{SERVE}:5dafb50",
        f"{REGISTRY}/{TRAIN}:5dafb50",
    ])


def test_only_the_current_recipes_offline_base_image_is_kept():
    current = base_image.offline_base_image()
    repository = current.partition(":")[0]
    old = f"{repository}:python3.11-bookworm-000000000000"
    assert prune.old_references([current, old, old], prune.kept_tags("abc1234")) == [old]


def test_outside_git_latest_is_the_only_tag_kept():
    assert prune.kept_tags(images.LATEST)[TRAIN] == {images.LATEST}
    keep = prune.kept_tags(images.LATEST)
    assert prune.old_references([f"{TRAIN}:latest", f"{TRAIN}:x"], keep) == [f"{TRAIN}:x"]


@pytest.mark.docker
def test_old_tags_are_listed_and_removed_from_a_real_engine(engine, base_image):
    """Only tags this test makes are removed: the engine may hold other sessions' (TEST_IMAGE_TAG)."""
    tag = f"prune-test-{uuid.uuid4().hex[:12]}"
    mine = [f"{SERVE}:{tag}", f"{REGISTRY}/{TRAIN}:{tag}"]
    for reference in mine:
        engine.run("tag", base_image, reference)
    try:
        listed = prune.listed_references(engine)
        old = prune.old_references(listed, prune.kept_tags(images.git_tag()))
        assert set(mine) <= set(old)
        assert prune.remove_tags(engine, mine) == {}
        assert not set(mine) & set(prune.listed_references(engine))
        assert engine.image_exists(base_image)  # the image keeps its own tag
        refused = prune.remove_tags(engine, [mine[0]])
        assert "No such image" in refused[mine[0]]
    finally:
        engine.run("rmi", *mine, check=False)
