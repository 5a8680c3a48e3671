"""TorchServe serving the same artifact, for reference in the serving benchmark (where it installs).

TorchServe (archived by its maintainers in 2025, the engine of AWS's PyTorch inference containers
up to 2.6) runs in its own environment, ``CACHE_DIR/bench/torchserve-venv``: it sees ``.venv/serve``
(torch, Pillow, numpy) through a ``.pth`` file and gets ``torchserve`` and ``torch-model-archiver``
from the package index once. Its handler calls the artifact's own ``inference.py`` (the torch
engine), so the model, the decoding and the preprocessing are the ones our server runs; only the
serving stack differs. ``TorchServeProcess`` answers like ``scripts.local.server.LocalServer``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scripts import CACHE_DIR, REPO_ROOT
from scripts.local.server import free_port

VENV = CACHE_DIR / "bench" / "torchserve-venv"
# pyyaml: imported by TorchServe's worker, not declared by it.
PACKAGES = ["torchserve==0.12.0", "torch-model-archiver==0.12.0", "pyyaml"]
PYTHON_VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"
SERVE_SITE = REPO_ROOT / ".venv" / "serve" / "lib" / PYTHON_VERSION / "site-packages"
MODEL_NAME = "classifier"
PREDICTIONS_PATH = f"/predictions/{MODEL_NAME}"

# The TorchServe handler: the artifact's inference.py, loaded once per worker.
HANDLER = '''
import os
import inference

_model = None


def handle(data, context):
    global _model
    if _model is None:
        _model = inference.model_fn(os.environ["BENCH_ARTIFACT"])
    if data is None:
        return None
    answers = []
    for request in data:
        body = request.get("body") or request.get("data")
        top_k = inference.predict_fn(inference.input_fn(bytes(body), "image/jpeg"), _model)
        answers.append(inference.output_fn(top_k, "application/json")[0].decode())
    return answers
'''


def install() -> Path:
    """TorchServe's environment (made once); raises CalledProcessError when it does not install."""
    stamp = VENV / (".installed-" + "-".join(PACKAGES).replace("=", ""))
    if not stamp.is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        site = VENV / "lib" / PYTHON_VERSION / "site-packages"
        (site / "serve-env.pth").write_text(f"{SERVE_SITE}\n")
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *PACKAGES],
                       check=True)
        stamp.touch()
    return VENV / "bin"


class TorchServeProcess:
    """TorchServe on free loopback ports with ``workers`` workers of ``threads`` threads each."""

    def __init__(self, model_dir: Path, work: Path, workers: int, threads: int):
        bin_dir = install()
        self.port = free_port()
        self.path = PREDICTIONS_PATH
        work.mkdir(parents=True, exist_ok=True)
        store = work / "store"
        store.mkdir(exist_ok=True)
        (work / "handler.py").write_text(HANDLER)
        subprocess.run([str(bin_dir / "torch-model-archiver"), "--model-name", MODEL_NAME, "--version", "1",
                        "--handler", str(work / "handler.py"), "--export-path", str(store),
                        "--archive-format", "no-archive", "--force"], check=True)
        (work / "config.properties").write_text("\n".join([
            f"inference_address=http://127.0.0.1:{self.port}",
            f"management_address=http://127.0.0.1:{free_port()}",
            f"metrics_address=http://127.0.0.1:{free_port()}",
            f"default_workers_per_model={workers}",
            "disable_token_authorization=true",
            "install_py_dep_per_model=false",
            f"model_store={store}",
            f"load_models={MODEL_NAME}",
            "",
        ]))
        env = {
            **os.environ, "OMP_NUM_THREADS": str(threads), "SERVE_ENGINE": "torch",
            "BENCH_ARTIFACT": str(model_dir), "PYTHONPATH": str(model_dir / "code"),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "TEMP": str(work),
        }
        self._log = open(work / "torchserve.log", "wb")  # noqa: SIM115 (closed by stop())
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs",
             "--ts-config", str(work / "config.properties"), "--model-store", str(store)],
            cwd=work, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_answering(self, body: bytes, timeout: float = 300) -> float:
        """Seconds from the start to the first answered prediction (TorchServe's /ping does not wait
        for the model)."""
        while time.monotonic() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited ({self.process.returncode})")
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                connection.request("POST", self.path, body=body, headers={"Content-Type": "image/jpeg"})
                if connection.getresponse().status == 200:
                    return time.monotonic() - self.started
            except (OSError, http.client.HTTPException):
                pass
            finally:
                connection.close()
            time.sleep(0.05)
        raise TimeoutError(f"TorchServe answered no prediction within {timeout:.0f} s")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()
