"""The serving wire format: what a client sends to ``/invocations`` and what it gets back.

Requests (``Content-Type``):

- ``image/*`` or ``application/x-image``: the bytes of one image in any format Pillow reads;
- ``application/json``: ``{"image": "<base64>"}`` or ``{"images": ["<base64>", ...]}`` (a batch),
  optionally with ``"k": 3``;
- ``application/x-npy``: one HWC ``uint8`` array, or an NHWC batch (``numpy.save`` bytes).

``k`` (how many classes to return, default 5) can also be given for every content type as the
SageMaker custom attribute ``k=3`` (``invoke_endpoint(CustomAttributes="k=3")``).

Responses (``Accept``, default ``application/json``): ``{"predictions": [TOP_K]}`` for one image,
``{"predictions": [[TOP_K], ...]}`` for a batch, where ``TOP_K`` is a list, most probable first, of
``{"label": "Affenpinscher", "class_index": 0, "probability": 0.93}``. ``application/x-npy`` holds
the same as a structured array of shape ``(k,)`` or ``(n, k)`` with those three fields.
Errors are JSON too: ``{"code": 415, "type": "UnsupportedMediaType", "message": "..."}``.

Standard library only: clients (``scripts/aws/invoke.py``) import it as well as the server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

JSON = "application/json"
NPY = "application/x-npy"
X_IMAGE = "application/x-image"
IMAGE_TYPE_PREFIX = "image/"
RESPONSE_TYPES = (JSON, NPY)

IMAGE_FIELD = "image"
IMAGES_FIELD = "images"
TOP_K_FIELD = "k"
PREDICTIONS_FIELD = "predictions"
LABEL_FIELD = "label"
CLASS_INDEX_FIELD = "class_index"
PROBABILITY_FIELD = "probability"
DEFAULT_TOP_K = 5

# SageMaker passes invoke_endpoint's CustomAttributes to the container in this header.
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


def media_type(content_type: str | None) -> str:
    """``"Image/JPEG; q=1"`` -> ``"image/jpeg"`` (empty when there is no header)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_image_type(content_type: str | None) -> bool:
    """Whether a request of this content type carries raw image bytes."""
    kind = media_type(content_type)
    return kind == X_IMAGE or (kind.startswith(IMAGE_TYPE_PREFIX) and len(kind) > len(IMAGE_TYPE_PREFIX))


def parse_custom_attributes(value: str | None) -> dict[str, str]:
    """``"k=3, trace=abc"`` -> ``{"k": "3", "trace": "abc"}``; items without ``=`` are ignored."""
    pairs = {}
    for item in (value or "").replace(";", ",").split(","):
        name, sep, content = item.partition("=")
        if sep and name.strip():
            pairs[name.strip()] = content.strip()
    return pairs


def json_request(images: Sequence[bytes], k: int | None = None, batch: bool | None = None) -> bytes:
    """The ``application/json`` body for encoded images (a batch when several, or ``batch=True``)."""
    encoded = [base64.b64encode(image).decode("ascii") for image in images]
    as_batch = len(encoded) != 1 if batch is None else batch
    body: dict[str, object] = {IMAGES_FIELD: encoded} if as_batch else {IMAGE_FIELD: encoded[0]}
    if k is not None:
        body[TOP_K_FIELD] = k
    return json.dumps(body).encode("utf-8")
