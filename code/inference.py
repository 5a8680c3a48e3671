"""SageMaker serving handlers: ``model_fn``, ``input_fn``, ``predict_fn`` and ``output_fn``.

sagemaker-inference's Transformer calls them inside each model-server worker:
``model_fn`` once (then ``model_warmup_fn``), and for every request
``output_fn(predict_fn(input_fn(body, content_type), model), accept)``.
This file travels in the model artifact's ``code/`` folder together with the modules it imports
(``classifier.artifact.SERVING_CODE_FILES``), so an artifact is served the way it was trained:
images go through ``classifier.preprocessing``'s evaluation transform, configured by the
artifact's ``preprocess.json``, exactly as the trainer evaluates them, and the network runs in the
engine ``SERVE_ENGINE`` picks (``classifier.engines``: OpenVINO int8 or fp32, or torch).

The wire format is ``classifier.protocol``. A request the model cannot serve raises
``RequestError``, whose status (4xx) and message the server sends back.
Limits, from the environment: ``SERVE_MAX_IMAGE_PIXELS`` (per image, checked before decoding)
and ``SERVE_MAX_BATCH_IMAGES`` (images per request).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import numpy as np
from PIL import Image
from sagemaker_inference.errors import BaseInferenceToolkitError

from classifier import artifact, engines, protocol
from classifier.preprocessing import PreprocessConfig, eval_array, load_image

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS_ENV = "SERVE_MAX_IMAGE_PIXELS"
MAX_BATCH_IMAGES_ENV = "SERVE_MAX_BATCH_IMAGES"
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # a 48-megapixel phone photo passes
DEFAULT_MAX_BATCH_IMAGES = 32


class RequestError(BaseInferenceToolkitError):
    """A request the model cannot serve: answered with ``status`` and a message naming the problem."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(int(status), message, status.phrase)


@dataclass(frozen=True)
class ServedModel:
    """What ``model_fn`` loads from the artifact."""

    engine: engines.Engine  # probabilities of shape (batch, classes)
    classes: list[str]
    preprocess: PreprocessConfig


@dataclass(frozen=True)
class ImageRequest:
    """A parsed request: encoded images (bytes) or pixel arrays, decoded one at a time later."""

    images: list[bytes | np.ndarray]
    k: int
    batch: bool  # answer with one top-k list per image (a batch request) or a single list


@dataclass(frozen=True)
class TopK:
    """The k most probable classes of every image of a request, most probable first."""

    class_indices: list[list[int]]
    probabilities: list[list[float]]
    labels: list[list[str]]
    batch: bool


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int
    max_batch_images: int

    @classmethod
    def from_environ(cls) -> Limits:
        return cls(
            max_image_pixels=_positive_int_env(MAX_IMAGE_PIXELS_ENV, DEFAULT_MAX_IMAGE_PIXELS),
            max_batch_images=_positive_int_env(MAX_BATCH_IMAGES_ENV, DEFAULT_MAX_BATCH_IMAGES),
        )


def _positive_int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


LIMITS = Limits.from_environ()
# load_image checks LIMITS.max_image_pixels itself, with a message naming the limit.
Image.MAX_IMAGE_PIXELS = None


# ---------------------------------------------------------------- model


def model_fn(model_dir: str) -> ServedModel:
    """Loads the model for the chosen engine, its class names and preprocessing, and checks they agree."""
    started = time.perf_counter()
    root = Path(model_dir).resolve()  # the real folder in messages, not a link to it
    missing = artifact.missing_files(root)
    if missing:
        raise FileNotFoundError(f"model artifact in {root} is incomplete: missing {', '.join(missing)}")
    choice = engines.engine_choice(root, os.environ)
    model_file = root / engines.ENGINE_FILES[choice.engine]
    try:
        engine = engines.load_engine(root, choice.engine, engines.worker_threads(os.environ))
    except Exception as error:
        raise RuntimeError(f"cannot load {model_file}: {error}") from error
    classes = json.loads((root / artifact.CLASSES_FILE).read_text())
    if not (isinstance(classes, list) and classes and all(isinstance(name, str) for name in classes)):
        raise ValueError(f"{root / artifact.CLASSES_FILE} must be a non-empty JSON list of class names")
    preprocess = PreprocessConfig.load(root / artifact.PREPROCESS_FILE)

    side = preprocess.image_size
    probabilities = engine.probabilities(np.zeros((2, 3, side, side), dtype=np.float32))
    if tuple(probabilities.shape) != (2, len(classes)):
        raise ValueError(
            f"the model maps a batch of 2 images to logits of shape {tuple(probabilities.shape)}, "
            f"expected (2, {len(classes)}) for the {len(classes)} classes of {artifact.CLASSES_FILE}"
        )
    logger.info(
        "loaded %s (engine %s): %d classes, %dx%d input, in %.2f s (threads: %s)",
        model_file, engine.name, len(classes), side, side, time.perf_counter() - started,
        engines.worker_threads(os.environ) or "all cores",
    )
    return ServedModel(engine=engine, classes=classes, preprocess=preprocess)


def model_warmup_fn(model_dir: str, model: ServedModel) -> None:
    """Sends one JSON batch of two JPEG images through the whole request path before serving."""
    image = Image.new("RGB", (model.preprocess.resize_size,) * 2, (124, 116, 104))
    encoded = io.BytesIO()
    image.save(encoded, "JPEG")
    body = protocol.json_request([encoded.getvalue()] * 2, k=1)
    response, content_type = output_fn(predict_fn(input_fn(body, protocol.JSON), model), protocol.JSON)
    predictions = json.loads(response)[protocol.PREDICTIONS_FIELD]
    probabilities = [top[0][protocol.PROBABILITY_FIELD] for top in predictions]
    if len(predictions) != 2 or not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probabilities):
        raise ValueError(f"warm-up inference gave an unusable answer: {response[:200]!r}")
    logger.info("warm-up inference passed (%s)", content_type)


# ---------------------------------------------------------------- request


def input_fn(input_data: bytes | str | None, content_type: str | None, context=None) -> ImageRequest:
    """Parses a request body into images to classify (decoded later, one at a time, in ``predict_fn``)."""
    kind = protocol.media_type(content_type)
    if not (protocol.is_image_type(kind) or kind in (protocol.JSON, protocol.NPY)):
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"unsupported Content-Type {content_type!r}: send image/jpeg, image/png (any image/*), "
            f"{protocol.X_IMAGE}, {protocol.JSON} or {protocol.NPY}",
        )
    body = input_data.encode("utf-8") if isinstance(input_data, str) else bytes(input_data or b"")
    if not body:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"empty request body (Content-Type {kind})")

    k = _top_k(_custom_attributes(context).get(protocol.TOP_K_FIELD), "custom attribute k")
    if kind == protocol.JSON:
        images, batch, json_k = _parse_json(body)
        k = _top_k(json_k, "JSON field 'k'") if json_k is not None else k
    elif kind == protocol.NPY:
        images, batch = _parse_npy(body)
    else:
        images, batch = [body], False
    if len(images) > LIMITS.max_batch_images:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"a batch of {len(images)} images exceeds the limit of {LIMITS.max_batch_images} "
            f"({MAX_BATCH_IMAGES_ENV})",
        )
    return ImageRequest(images=images, k=k if k is not None else protocol.DEFAULT_TOP_K, batch=batch)


def _custom_attributes(context) -> dict[str, str]:
    """SageMaker's CustomAttributes header of the current request (MMS keeps the header's spelling)."""
    if context is None or not getattr(context, "request_processor", None):
        return {}
    headers = context.request_processor[0].get_request_properties() or {}
    wanted = protocol.CUSTOM_ATTRIBUTES_HEADER.lower()
    value = next((v for name, v in headers.items() if str(name).lower() == wanted), None)
    return protocol.parse_custom_attributes(value)


def _top_k(value: object, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{source} must be a positive integer, got {value!r}")
    return value


def _parse_json(body: bytes) -> tuple[list[bytes], bool, object]:
    expected = (
        f"expected a JSON object with {protocol.IMAGE_FIELD!r} (a base64 image) or "
        f"{protocol.IMAGES_FIELD!r} (a list of base64 images), and optionally {protocol.TOP_K_FIELD!r}"
    )
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"malformed JSON: {error}") from None
    if not isinstance(document, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, expected)
    batch = protocol.IMAGES_FIELD in document
    if batch == (protocol.IMAGE_FIELD in document):
        raise RequestError(HTTPStatus.BAD_REQUEST, expected)
    encoded = document[protocol.IMAGES_FIELD] if batch else [document[protocol.IMAGE_FIELD]]
    if not isinstance(encoded, list) or not encoded:
        message = f"{protocol.IMAGES_FIELD!r} must be a non-empty list; {expected}"
        raise RequestError(HTTPStatus.BAD_REQUEST, message)
    names = [f"{protocol.IMAGES_FIELD}[{i}]" if batch else protocol.IMAGE_FIELD for i in range(len(encoded))]
    images = [_from_base64(text, name) for text, name in zip(encoded, names, strict=True)]
    return images, batch, document.get(protocol.TOP_K_FIELD)


def _from_base64(text: object, name: str) -> bytes:
    if not isinstance(text, str):
        message = f"{name} must be a base64 string, got {type(text).__name__}"
        raise RequestError(HTTPStatus.BAD_REQUEST, message)
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} is not valid base64: {error}") from None
    if not data:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} is empty")
    return data


def _parse_npy(body: bytes) -> tuple[list[np.ndarray], bool]:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as error:  # numpy raises ValueError, EOFError, OSError... for bad bytes
        raise RequestError(HTTPStatus.BAD_REQUEST, f"malformed NPY body: {error}") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        dtype = getattr(array, "dtype", type(array).__name__)
        raise RequestError(HTTPStatus.BAD_REQUEST, f"NPY images must be uint8 arrays, got {dtype}")
    batch = array.ndim == 4
    channels_ok = array.ndim == 2 or array.shape[-1] in (1, 3, 4)
    if array.ndim not in (2, 3, 4) or not channels_ok or 0 in array.shape:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"NPY array of shape {array.shape}: expected HWC (or HW) with 1, 3 or 4 channels, or NHWC",
        )
    return (list(array) if batch else [array]), batch


# ---------------------------------------------------------------- prediction


def decode_image(image: bytes | np.ndarray, name: str = "the image") -> Image.Image:
    """An encoded image or an HWC uint8 array as a Pillow image, within the pixel limit."""
    if isinstance(image, np.ndarray):
        height, width = image.shape[:2]
        if height * width > LIMITS.max_image_pixels:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{name} is too large: {width}x{height} = {width * height} pixels exceeds the limit of "
                f"{LIMITS.max_image_pixels} pixels ({MAX_IMAGE_PIXELS_ENV})",
            )
        return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    try:
        return load_image(io.BytesIO(image), max_pixels=LIMITS.max_image_pixels)
    except Image.DecompressionBombError as error:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{name} is too large: {error} ({MAX_IMAGE_PIXELS_ENV})"
        ) from None
    except MemoryError:
        raise
    except Exception as error:  # Pillow's decoders raise many types for malformed input
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"cannot decode {name} ({type(error).__name__}: {error})"
        ) from None


def predict_fn(request: ImageRequest, model: ServedModel) -> TopK:
    """Decodes and transforms each image as the trainer evaluates, then takes the top k classes."""
    names = [f"images[{i}]" for i in range(len(request.images))] if request.batch else ["the image"]
    inputs = np.stack([
        eval_array(decode_image(image, name), model.preprocess)
        for image, name in zip(request.images, names, strict=True)
    ])
    probabilities = model.engine.probabilities(inputs)
    k = min(request.k, len(model.classes))
    indices = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    class_indices = indices.tolist()
    return TopK(
        class_indices=class_indices,
        probabilities=np.take_along_axis(probabilities, indices, axis=1).tolist(),
        labels=[[model.classes[i] for i in row] for row in class_indices],
        batch=request.batch,
    )


# ---------------------------------------------------------------- response


def output_fn(prediction: TopK, accept: str | None) -> tuple[bytes, str]:
    """Serialises the top k as JSON or NPY, whichever ``Accept`` prefers."""
    response_type = _negotiate(accept)
    if response_type == protocol.NPY:
        return _to_npy(prediction), protocol.NPY
    rows = [
        [
            {protocol.LABEL_FIELD: label, protocol.CLASS_INDEX_FIELD: index, protocol.PROBABILITY_FIELD: p}
            for label, index, p in zip(labels, indices, probabilities, strict=True)
        ]
        for labels, indices, probabilities in zip(
            prediction.labels, prediction.class_indices, prediction.probabilities, strict=True
        )
    ]
    document = {protocol.PREDICTIONS_FIELD: rows if prediction.batch else rows[0]}
    return json.dumps(document).encode("utf-8"), protocol.JSON


def _negotiate(accept: str | None) -> str:
    """The response type ``Accept`` prefers (by q-value, then order); JSON for ``*/*``."""
    ranges = []
    for position, item in enumerate((accept or protocol.JSON).split(",")):
        kind, _, parameters = item.partition(";")
        quality = 1.0
        for parameter in parameters.split(";"):
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges.append((-quality, position, kind.strip().lower()))
    for negative_quality, _, kind in sorted(ranges):
        if negative_quality >= 0:
            continue
        if kind in protocol.RESPONSE_TYPES:
            return kind
        if kind in ("*/*", "application/*"):
            return protocol.JSON
    raise RequestError(
        HTTPStatus.NOT_ACCEPTABLE,
        f"cannot answer in Accept {accept!r}: responses are {' or '.join(protocol.RESPONSE_TYPES)}",
    )


def _to_npy(prediction: TopK) -> bytes:
    """The top k as a structured array (label, class_index, probability): shape (k,) or (n, k)."""
    longest = max((len(label) for row in prediction.labels for label in row), default=1)
    dtype = np.dtype([
        (protocol.LABEL_FIELD, f"<U{longest}"),
        (protocol.CLASS_INDEX_FIELD, "<i8"),
        (protocol.PROBABILITY_FIELD, "<f4"),
    ])
    rows = [
        list(zip(labels, indices, probabilities, strict=True))
        for labels, indices, probabilities in zip(
            prediction.labels, prediction.class_indices, prediction.probabilities, strict=True
        )
    ]
    array = np.array(rows, dtype=dtype)
    buffer = io.BytesIO()
    np.save(buffer, array if prediction.batch else array[0], allow_pickle=False)
    return buffer.getvalue()
