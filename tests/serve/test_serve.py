"""The real serving stack (``make serve-local``: gateway + MMS + our handlers), serving the shared
training run's artifact, answers every content type as the trainer evaluates, refuses every bad
request with its 4xx, and keeps serving."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from serve_helpers import ReferenceModel, ServerProcess, assert_same_top_k, encode

from classifier import artifact, protocol
from classifier.data import build_loaders, load_splits
from scripts.datasets.sample import make_image

NUM_CLASSES = 3
MAX_IMAGE_PIXELS = 1_000_000  # small limits make the bombs cheap to build
MAX_BATCH_IMAGES = 8


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def serving_artifact(trained_run):
    """The artifact of the suite's one real training run (``sample_dataset``: 3 classes)."""
    return trained_run / "model"


@pytest.fixture(scope="module")
def server(serving_artifact, tmp_path_factory):
    """One server for the module, through ``make serve-local``: 2 workers x 1 torch thread."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    env = {
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
        "SERVE_TORCH_THREADS": "1",
        "SERVE_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
        "SERVE_MAX_BATCH_IMAGES": str(MAX_BATCH_IMAGES),
    }
    process = ServerProcess(serving_artifact, log, env, via_make=True)
    try:
        process.pings = process.watch_ping(lambda status, body: status == 200)
        process.workers_at_start = process.model_server_processes()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def reference(serving_artifact):
    return ReferenceModel(serving_artifact)


def sample(index: int = 0, size: int = 64) -> Image.Image:
    return make_image(index % NUM_CLASSES, NUM_CLASSES, size, np.random.default_rng(index))


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def predictions(response) -> list:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(protocol.JSON)
    return response.json()[protocol.PREDICTIONS_FIELD]


# ---------------------------------------------------------------- health


def test_ping_is_503_while_loading_then_200_once_a_worker_is_warm(server):
    statuses = [status for status, _ in server.pings]
    assert statuses[0] == 503 and server.pings[0][1]["status"] == "Loading"
    assert statuses[-1] == 200 and server.pings[-1][1]["status"] == "Healthy"
    assert 200 not in statuses[:-1]
    assert "warm-up inference passed" in server.log_text()
    assert server.ping()[0] == 200


def test_make_serve_local_listens_on_this_machine_only(server):
    assert server.listening_addresses() == {"127.0.0.1"}


def test_execution_parameters_and_unknown_paths(server):
    parameters = server.session.get(f"{server.url}/execution-parameters", timeout=5).json()
    assert parameters == {"MaxConcurrentTransforms": 2, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 6}
    missing = server.session.post(f"{server.url}/predict", data=b"x", timeout=5)
    assert missing.status_code == 404 and "/invocations" in missing.json()["message"]


# ---------------------------------------------------------------- content types


def _cmyk_jpeg():
    return encode(sample(1).convert("CMYK"), "JPEG", quality=95)


def _sixteen_bit_png():
    gray = np.asarray(sample(2).convert("L"), dtype=np.uint16) * 257
    image = Image.fromarray(gray)
    assert image.mode == "I;16"
    return encode(image, "PNG")


def _rgba_png():
    rgba = sample(0).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    return encode(rgba, "PNG")


def _palette_png_with_transparency():
    return encode(sample(1).convert("P"), "PNG", transparency=0)


IMAGES = {
    "jpeg": ("image/jpeg", lambda: encode(sample(0), "JPEG", quality=90)),
    "png": ("image/png", lambda: encode(sample(1), "PNG")),
    "x-image": (protocol.X_IMAGE, lambda: encode(sample(2), "PNG")),
    "grayscale": ("image/png", lambda: encode(sample(0).convert("L"), "PNG")),
    "rgba": ("image/png", _rgba_png),
    "palette-transparent": ("image/png", _palette_png_with_transparency),
    "cmyk": ("image/jpeg", _cmyk_jpeg),
    "16-bit": ("image/png", _sixteen_bit_png),
    "webp": ("image/webp", lambda: encode(sample(1), "WEBP", quality=90)),
    "bmp": ("image/bmp", lambda: encode(sample(2), "BMP")),
    "large-jpeg": ("image/jpeg", lambda: encode(sample(0, size=900), "JPEG")),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_every_image_kind_is_served_as_the_trainer_evaluates_it(server, reference, name):
    content_type, make = IMAGES[name]
    body = make()
    assert_same_top_k(predictions(server.invoke(body, content_type)), reference.top_k(body))


def test_gif_is_served_from_its_first_frame(server, reference):
    frames = [sample(0), sample(1)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    first = Image.open(io.BytesIO(gif)).convert("RGB")  # frame 0 as Pillow decodes it (palette)
    served = predictions(server.invoke(gif, "image/gif"))
    assert_same_top_k(served, reference.top_k(encode(first, "PNG")))


def test_exif_orientation_is_honoured(server, reference):
    raw = sample(2).crop((0, 0, 64, 40))  # not square: a rotation changes the picture
    exif = raw.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    served = predictions(server.invoke(encode(raw, "PNG", exif=exif), "image/png", headers=None))
    upright = reference.top_k(encode(raw.transpose(Image.Transpose.ROTATE_270), "PNG"))
    as_stored = reference.top_k(encode(raw, "PNG"))
    assert_same_top_k(served, upright)
    stored_probabilities = [p["probability"] for p in as_stored]
    assert [p["probability"] for p in served] != pytest.approx(stored_probabilities, abs=1e-6)


def test_json_single_image_with_k(server, reference):
    jpeg = encode(sample(0), "JPEG")
    served = predictions(server.invoke(protocol.json_request([jpeg], k=2), protocol.JSON))
    assert len(served) == 2
    assert_same_top_k(served, reference.top_k(jpeg, k=2))


def test_json_batch_answers_one_list_per_image_in_order(server, reference):
    images = [encode(sample(0), "JPEG"), encode(sample(1), "PNG"), encode(sample(2).convert("L"), "PNG")]
    served = predictions(server.invoke(protocol.json_request(images), protocol.JSON))
    assert len(served) == len(images)
    for got, image in zip(served, images, strict=True):
        assert_same_top_k(got, reference.top_k(image))


def test_json_accepts_a_one_image_batch_and_a_data_url(server, reference):
    png = encode(sample(1), "PNG")
    batch = predictions(server.invoke(protocol.json_request([png], batch=True), protocol.JSON))
    assert len(batch) == 1
    assert_same_top_k(batch[0], reference.top_k(png))
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    body = json.dumps({"image": data_url}).encode()
    single = predictions(server.invoke(body, "application/json; charset=utf-8"))
    assert_same_top_k(single, reference.top_k(png))


def test_k_from_custom_attributes_and_clamped_to_the_classes(server, reference):
    jpeg = encode(sample(2), "JPEG")
    headers = {protocol.CUSTOM_ATTRIBUTES_HEADER: "k=1"}
    served = predictions(server.invoke(jpeg, "image/jpeg", headers=headers))
    assert_same_top_k(served, reference.top_k(jpeg, 1))
    everything = predictions(server.invoke(protocol.json_request([jpeg], k=50), protocol.JSON))
    assert len(everything) == NUM_CLASSES


def test_npy_single_grayscale_and_batch(server, reference):
    images = [sample(0), sample(1)]
    single = predictions(server.invoke(npy(np.asarray(images[0])), protocol.NPY))
    assert_same_top_k(single, reference.top_k(encode(images[0], "PNG")))
    gray = images[1].convert("L")
    served = predictions(server.invoke(npy(np.asarray(gray)), protocol.NPY))
    assert_same_top_k(served, reference.top_k(encode(gray, "PNG")))
    batch = predictions(server.invoke(npy(np.stack([np.asarray(image) for image in images])), protocol.NPY))
    for got, image in zip(batch, images, strict=True):
        assert_same_top_k(got, reference.top_k(encode(image, "PNG")))


def test_accept_npy_returns_the_same_top_k_as_a_structured_array(server, reference):
    images = [encode(sample(0), "PNG"), encode(sample(1), "PNG")]
    response = server.invoke(protocol.json_request(images, k=2), protocol.JSON, accept=protocol.NPY)
    assert response.status_code == 200 and response.headers["Content-Type"] == protocol.NPY
    array = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert array.shape == (2, 2)
    for row, image in zip(array, images, strict=True):
        served = [{name: item[name].item() for name in array.dtype.names} for item in row]
        assert_same_top_k(served, reference.top_k(image, k=2), tolerance=1e-6)


@pytest.mark.parametrize("accept, expected", [
    ("*/*", protocol.JSON),
    ("application/x-npy;q=0.5, application/json", protocol.JSON),
    ("text/html, application/x-npy", protocol.NPY),
    ("application/*", protocol.JSON),
])
def test_accept_is_negotiated(server, accept, expected):
    response = server.invoke(encode(sample(0), "PNG"), "image/png", accept=accept)
    assert response.status_code == 200 and response.headers["Content-Type"] == expected


# ---------------------------------------------------------------- bad requests


def _json(document) -> bytes:
    return json.dumps(document).encode()


def _truncated_jpeg() -> bytes:
    jpeg = encode(sample(0, size=256), "JPEG")
    return jpeg[: len(jpeg) // 2]


def _chunks(total: int, size: int = 1 << 20):
    while total > 0:
        yield b"\0" * min(size, total)
        total -= size


@dataclass(frozen=True)
class Bad:
    body: object  # bytes, or a function making them (built when the test runs)
    content_type: str | None
    status: int
    words: str  # the error message must name the problem
    accept: str | None = None
    headers: dict | None = None


def _png(index: int = 0) -> bytes:
    return encode(sample(index), "PNG")


MB = 1024 * 1024
BAD_REQUESTS = {
    "empty body": Bad(b"", "image/jpeg", 400, "empty request body"),
    "undecodable image": Bad(b"this is not an image", "image/jpeg", 400, "cannot decode"),
    "truncated jpeg": Bad(_truncated_jpeg, "image/jpeg", 400, "cannot decode"),
    "unsupported content type": Bad(b"a,b\n1,2\n", "text/csv", 415, "text/csv"),
    "no content type": Bad(b"\xff\xd8\xff", None, 415, "Content-Type"),
    "unsupported accept": Bad(_png, "image/png", 406, "text/html", accept="text/html"),
    "payload over the limit": Bad(b"\0" * (6 * MB + 1), "image/jpeg", 413, "SAGEMAKER_MAX_PAYLOAD_IN_MB"),
    "chunked payload over the limit": Bad(lambda: _chunks(7 * MB), "image/jpeg", 413, "limit"),
    "decompression bomb": Bad(lambda: encode(Image.new("1", (1250, 1000)), "PNG"), "image/png", 413,
                              "SERVE_MAX_IMAGE_PIXELS"),
    "npy bomb": Bad(lambda: npy(np.zeros((1001, 1000, 3), np.uint8)), protocol.NPY, 413, "pixels"),
    "batch over the limit": Bad(lambda: protocol.json_request([_png()] * (MAX_BATCH_IMAGES + 1)),
                                protocol.JSON, 413, "SERVE_MAX_BATCH_IMAGES"),
    "malformed json": Bad(b'{"image": ', protocol.JSON, 400, "malformed JSON"),
    "json not utf-8": Bad(b'{"image": "\xff\xfe"}', protocol.JSON, 400, "UTF-8"),
    "json without image": Bad(_json({"picture": "abc"}), protocol.JSON, 400, "'image'"),
    "json empty batch": Bad(_json({"images": []}), protocol.JSON, 400, "non-empty list"),
    "malformed base64": Bad(_json({"image": "not base64!"}), protocol.JSON, 400, "base64"),
    "base64 of no image": Bad(_json({"images": [base64.b64encode(b"hello").decode()]}), protocol.JSON, 400,
                              "images[0]"),
    "bad k in json": Bad(lambda: protocol.json_request([_png()], k=0), protocol.JSON, 400, "'k'"),
    "bad k attribute": Bad(_png, "image/png", 400, "custom attribute k",
                           headers={protocol.CUSTOM_ATTRIBUTES_HEADER: "k=all"}),
    "malformed npy": Bad(b"\x93NUMPY garbage", protocol.NPY, 400, "NPY"),
    "npy of floats": Bad(lambda: npy(np.zeros((8, 8, 3), np.float32)), protocol.NPY, 400, "uint8"),
    "npy of 5 channels": Bad(lambda: npy(np.zeros((8, 8, 5), np.uint8)), protocol.NPY, 400, "shape"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_its_4xx_as_json_and_the_next_request_is_served(server, reference, name):
    bad = BAD_REQUESTS[name]
    body = bad.body() if callable(bad.body) else bad.body
    workers = server.model_server_processes()
    assert workers

    response = server.invoke(body, bad.content_type, accept=bad.accept, headers=bad.headers)
    assert response.status_code == bad.status, response.text
    assert response.headers["Content-Type"].startswith(protocol.JSON)
    error = response.json()
    assert error["code"] == bad.status and bad.words in error["message"], error

    good = encode(sample(1), "JPEG")
    assert_same_top_k(predictions(server.invoke(good, "image/jpeg")), reference.top_k(good))
    after = server.model_server_processes()
    assert after == workers, (workers, after, server.log_tail(40))  # no worker died or restarted


def test_no_worker_restarted_since_start_and_still_healthy(server):
    assert server.workers_at_start
    assert server.model_server_processes() == server.workers_at_start
    assert server.ping()[0] == 200


# ---------------------------------------------------------------- concurrency and parity


def test_fifty_requests_from_eight_threads_all_answered_correctly(server, reference):
    kinds = [
        ("image/jpeg", lambda i: encode(sample(i), "JPEG")),
        ("image/png", lambda i: encode(sample(i), "PNG")),
        (protocol.JSON, lambda i: protocol.json_request([encode(sample(i), "PNG")])),
        (protocol.NPY, lambda i: npy(np.asarray(sample(i)))),
    ]
    requests_ = [(i, *kinds[i % len(kinds)]) for i in range(50)]
    expected = {i: reference.top_k(encode(sample(i), "JPEG" if i % 4 == 0 else "PNG")) for i in range(50)}

    def send(item):
        i, content_type, make = item
        return i, server.invoke(make(i), content_type)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, requests_))
    assert len(answers) == 50
    for i, response in answers:
        assert_same_top_k(predictions(response), expected[i])


def test_served_predictions_equal_the_trainer_evaluation_of_the_test_split(
    server, reference, sample_dataset, serving_artifact
):
    """The trainer's own test loader through the exported model gives the served probabilities, and
    the served top-1 accuracy is the test accuracy the trainer reported."""
    data = load_splits({"training": sample_dataset})
    test = data.splits["test"]
    image_size = reference.transform.config.image_size
    loader = build_loaders(data, image_size, batch_size=8, workers=0, pin_memory=False)["test"]
    with torch.inference_mode():
        expected = torch.cat([torch.softmax(reference.module(images), dim=1) for images, _ in loader])

    images = [path.read_bytes() for path, _ in test.samples]
    served = []
    for start in range(0, len(images), MAX_BATCH_IMAGES):
        body = protocol.json_request(images[start:start + MAX_BATCH_IMAGES], k=NUM_CLASSES, batch=True)
        served += predictions(server.invoke(body, protocol.JSON))
    assert len(served) == len(test.samples) == len(expected)
    for top, row in zip(served, expected, strict=True):
        got = torch.zeros(NUM_CLASSES)
        for item in top:
            got[item[protocol.CLASS_INDEX_FIELD]] = item[protocol.PROBABILITY_FIELD]
        torch.testing.assert_close(got, row, atol=1e-5, rtol=0)

    top_1 = [top[0][protocol.CLASS_INDEX_FIELD] for top in served]
    correct = sum(index == label for index, (_, label) in zip(top_1, test.samples, strict=True))
    metrics = json.loads((serving_artifact / artifact.METRICS_FILE).read_text())
    assert correct / len(test.samples) == metrics["test"]["test_accuracy"]
