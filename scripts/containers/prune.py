"""The project's old image tags: every tag of its images but ``latest`` and the current build's.

``make clean`` removes them (``scripts.clean``). Builds tag both images with the git short SHA and
``latest`` (``scripts.containers.images``), so each commit built leaves a tag behind, and test
sessions leave theirs (``TEST_IMAGE_TAG``); the offline base image is tagged with its recipe's hash
(``scripts.engine.base_image``), so only the current recipe's is kept. The ECR-qualified copies
``make push`` tags (``<registry>/sagemaker-classifier-train:<tag>``) count as the same repository.
Images of other repositories are never touched. Standard library only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from scripts.containers import images
from scripts.engine import base_image
from scripts.engine.dockerd import Engine

NO_TAG = "<none>"


def kept_tags(current_tag: str) -> dict[str, set[str]]:
    """Per repository of this project, the tags to keep: ``latest`` and ``current_tag`` for the
    images, the current recipe's tag for the offline base image."""
    keep = {repository: {images.LATEST, current_tag} for repository in images.REPOSITORIES.values()}
    base_repository, _, base_tag = base_image.offline_base_image().partition(":")
    keep[base_repository] = {base_tag}
    return keep


def old_references(references: Iterable[str], keep: Mapping[str, Collection[str]]) -> list[str]:
    """The ``repository:tag`` references among ``references`` whose repository is in ``keep`` (by its
    last path part, so registry-qualified names count) and whose tag it does not keep; sorted, once each."""
    old = set()
    for reference in references:
        repository, _, tag = reference.rpartition(":")
        if not repository or tag == NO_TAG or "/" in tag:  # no tag: an untagged image or a registry port
            continue
        name = repository.rsplit("/", 1)[-1]
        if name in keep and tag not in keep[name]:
            old.add(reference)
    return sorted(old)


def listed_references(engine: Engine) -> list[str]:
    """Every ``repository:tag`` the engine holds."""
    listing = engine.run("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    return [line.strip() for line in listing.splitlines() if line.strip()]


def remove_tags(engine: Engine, references: Iterable[str]) -> dict[str, str]:
    """Removes each tag (``docker rmi``: an image no other tag holds goes with it; layers that kept
    images share stay). Returns the references that could not be removed, with Docker's reason
    (an image a container still uses is refused)."""
    refused = {}
    for reference in references:
        result = engine.run("rmi", reference, check=False)
        if result.returncode != 0:
            refused[reference] = (result.stderr.strip().splitlines() or ["docker rmi failed"])[-1]
    return refused
