"""A client for the real serving stack, and the predictions it must give.

``ServerProcess`` is ``scripts.local.server.LocalServer`` (``code/serve.py serve`` or
``make serve-local`` in ``.venv/serve``, on a free loopback port) with a requests session.
MMS refuses a second instance per machine only through sagemaker-inference's process scan and
ours keeps its config out of /etc, but servers still run one at a time here: module-scoped
fixtures, always stopped.

``ReferenceModel`` computes what the server must answer the way the trainer evaluates: the
shared decoder and evaluation transform, then the exported model, in this (dev) process.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import psutil
import requests
import torch
from PIL import Image

from classifier import artifact, protocol
from classifier.engines import ENGINE_ENV, TORCH
from classifier.preprocessing import EvalTransform, PreprocessConfig, load_image
from scripts.local.server import LocalServer


class ServerProcess(LocalServer):
    """A running server and a requests session to it.

    ``SERVE_ENGINE`` is ``torch`` unless ``env`` says otherwise: the torch.export path these tests
    check against ``ReferenceModel`` (the OpenVINO engines: ``test_serve_engines.py``).
    """

    def __init__(self, model_dir: Path, log_path: Path, env: dict[str, str] | None = None, **kwargs):
        super().__init__(model_dir, log_path, {ENGINE_ENV: TORCH, **(env or {})}, **kwargs)
        self.session = requests.Session()

    def invoke(self, body: bytes, content_type: str | None, accept: str | None = None,
               headers: dict[str, str] | None = None) -> requests.Response:
        sent = dict(headers or {})
        if content_type is not None:
            sent["Content-Type"] = content_type
        if accept is not None:
            sent["Accept"] = accept
        return self.session.post(f"{self.url}/invocations", data=body, headers=sent, timeout=120)

    def model_server_processes(self) -> set[int]:
        """The pids of the model-server workers (the Python processes under MMS)."""
        pids = set()
        for process in self.all_processes():
            with contextlib.suppress(psutil.Error):
                if any("model_service_worker" in part for part in process.cmdline()):
                    pids.add(process.pid)
        return pids

    def stop(self, timeout: float = 60) -> int:
        self.session.close()
        return super().stop(timeout)


# ---------------------------------------------------------------- expected predictions


class ReferenceModel:
    """The artifact evaluated as the trainer evaluates: shared decoder + eval transform + exported model."""

    def __init__(self, model_dir: Path):
        self.module = torch.export.load(Path(model_dir) / artifact.MODEL_FILE).module()
        self.classes = json.loads((Path(model_dir) / artifact.CLASSES_FILE).read_text())
        self.transform = EvalTransform(PreprocessConfig.load(Path(model_dir) / artifact.PREPROCESS_FILE))

    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.transform(image) for image in images])
        with torch.inference_mode():
            return torch.softmax(self.module(batch).float(), dim=1)

    def top_k(self, encoded: bytes, k: int = protocol.DEFAULT_TOP_K) -> list[dict]:
        """The JSON top k the server must answer for these image bytes."""
        probabilities = self.probabilities([load_image(io.BytesIO(encoded))])[0]
        values, indices = probabilities.topk(min(k, len(self.classes)))
        return [
            {protocol.LABEL_FIELD: self.classes[index], protocol.CLASS_INDEX_FIELD: index,
             protocol.PROBABILITY_FIELD: probability}
            for index, probability in zip(indices.tolist(), values.tolist(), strict=True)
        ]


def assert_same_top_k(served: list[dict], expected: list[dict], tolerance: float = 1e-5) -> None:
    """Same classes in the same order, probabilities equal within ``tolerance``."""
    for field in (protocol.CLASS_INDEX_FIELD, protocol.LABEL_FIELD):
        assert [p[field] for p in served] == [p[field] for p in expected], (served, expected)
    for got, want in zip(served, expected, strict=True):
        difference = abs(got[protocol.PROBABILITY_FIELD] - want[protocol.PROBABILITY_FIELD])
        assert difference <= tolerance, (got, want)


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()
