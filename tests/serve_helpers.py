"""The real serving stack as a subprocess, a client for it, and the predictions it must give.

``ServerProcess`` runs ``code/serve.py serve`` (or ``make serve-local``) in ``.venv/serve`` on a
free loopback port, in its own session, with its output in a log file. MMS refuses a second
instance per machine only through sagemaker-inference's process scan, and ours keeps its config
out of /etc, but servers are still started one at a time: module-scoped fixtures, always stopped.

``expected_top_k`` computes what the server must answer the way the trainer evaluates: the
shared decoder and evaluation transform, then the exported model, in this (dev) process.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import requests
import torch
from PIL import Image

from classifier import artifact, protocol
from classifier.preprocessing import EvalTransform, PreprocessConfig, load_image

REPO = Path(__file__).resolve().parent.parent
SERVE_PYTHON = REPO / ".venv" / "serve" / "bin" / "python"
HEALTHY_TIMEOUT_S = 300  # two workers importing torch on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """One running server; ``stop()`` it (SIGTERM) and read its exit status."""

    def __init__(self, model_dir: Path, log_path: Path, env: dict[str, str] | None = None,
                 via_make: bool = False):
        self.port = free_port()
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, "SERVE_BIND_HOST": "127.0.0.1", **(env or {})}
        if via_make:
            command = ["make", "-s", "serve-local", f"MODEL={model_dir}", f"PORT={self.port}"]
        else:
            environ["SAGEMAKER_BIND_TO_PORT"] = str(self.port)
            command = [str(SERVE_PYTHON), "code/serve.py", "serve", "--model-dir", str(model_dir)]
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            command, cwd=REPO, env=environ, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.session = requests.Session()

    def ping(self) -> tuple[int, dict] | None:
        """(status, body) of ``/ping``, or None while nothing listens."""
        try:
            response = self.session.get(f"{self.url}/ping", timeout=5)
        except requests.ConnectionError:
            return None
        return response.status_code, response.json()

    def watch_ping(self, until, timeout: float = HEALTHY_TIMEOUT_S) -> list[tuple[int, dict]]:
        """Polls ``/ping`` until ``until(status, body)``; returns every answer seen, in order."""
        seen: list[tuple[int, dict]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited ({self.process.returncode}):\n{self.log_tail()}")
            answer = self.ping()
            if answer is not None:
                seen.append(answer)
                if until(*answer):
                    return seen
            time.sleep(0.25)
        raise AssertionError(f"/ping never satisfied the condition; last {seen[-3:]}\n{self.log_tail()}")

    def invoke(self, body: bytes, content_type: str | None, accept: str | None = None,
               headers: dict[str, str] | None = None) -> requests.Response:
        sent = dict(headers or {})
        if content_type is not None:
            sent["Content-Type"] = content_type
        if accept is not None:
            sent["Accept"] = accept
        return self.session.post(f"{self.url}/invocations", data=body, headers=sent, timeout=120)

    def model_server_processes(self) -> set[int]:
        """The pids of the model-server workers (Python processes under MMS)."""
        pids = set()
        for process in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if any("model_service_worker" in part for part in process.cmdline()):
                    pids.add(process.pid)
            except psutil.Error:
                continue
        return pids

    def all_processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the server's session (as ``docker stop`` / Ctrl-C would), then its exit status."""
        leftovers = self.all_processes()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            for process in leftovers:  # never leave a model server behind, whatever happened
                try:
                    if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                        process.kill()
                except psutil.Error:
                    pass
            self._log.close()
            self.session.close()
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


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
