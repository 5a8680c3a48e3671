"""Which fast CPU engine: ONNX Runtime against OpenVINO, fp32 and int8, side by side on this machine.

    make bench-engines          # writes benchmarks/engines.md

The choice behind ``classifier.quantize`` (OpenVINO + NNCF). The same ResNet50 (133 classes, 224
px, random weights: speed does not depend on them), exported with ``torch.export`` as the trainer
exports it, is converted to ONNX (``torch.onnx``, dynamo) and to OpenVINO IR, quantized to int8 by
each toolchain's static post-training quantization (ONNX Runtime: QDQ, per-channel weights, reduced
range for CPUs without VNNI; OpenVINO: NNCF) on the same calibration images, then timed one image
at a time, engines taking turns, with 1 and 2 threads. Also recorded: the time to load a model
and answer once, the installed size of each runtime, and what each toolchain requires of protobuf
(the training image pins protobuf <= 3.20.3 for smdebug).

The candidates live in their own environment, ``CACHE_DIR/bench/engines-venv``: ONNX Runtime and
its tools are in none of the project's environments. It sees ``.venv/serve`` (torch, OpenVINO)
through a ``.pth`` file and installs the rest from the package index once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from scripts import CACHE_DIR, REPO_ROOT

REPORT = REPO_ROOT / "benchmarks" / "engines.md"
VENV = CACHE_DIR / "bench" / "engines-venv"
PYTHON_VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"
SERVE_SITE = REPO_ROOT / ".venv" / "serve" / "lib" / PYTHON_VERSION / "site-packages"
CANDIDATES = ["onnxruntime==1.32.0", "onnx==1.23.2", "onnxscript==0.7.2", "nncf==3.4.0"]
IMAGE_SIZE, NUM_CLASSES = 224, 133
CALIBRATION_IMAGES = 64
TIMED_ROUNDS = 40
ENGINES = ("onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino int8")


# ---------------------------------------------------------------- the candidates' environment


def venv_python() -> Path:
    """The engines' environment, made (once) beside ``.venv/serve``."""
    python = VENV / "bin" / "python"
    stamp = VENV / (".installed-" + "-".join(CANDIDATES).replace("=", ""))
    if stamp.is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    site = next((VENV / "lib").glob("python3*/site-packages"))
    (site / "serve-env.pth").write_text(f"{SERVE_SITE}\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *CANDIDATES], check=True)
    stamp.touch()
    return python


# ---------------------------------------------------------------- inside that environment


def calibration_batches(count: int) -> list[np.ndarray]:
    """Generated photo-like images through the serving preprocessing, one per batch."""
    from classifier.preprocessing import PreprocessConfig, eval_array
    from scripts.datasets.sample import make_image

    config = PreprocessConfig.for_image_size(IMAGE_SIZE)
    return [eval_array(make_image(i % 3, 3, 320, np.random.default_rng(i)), config)[np.newaxis]
            for i in range(count)]


def prepare(program: Path, work: Path) -> dict[str, Path]:
    """The four models, from the ``torch.export`` program."""
    import nncf
    import onnx
    import openvino as ov
    import torch
    from onnxruntime import quantization as ortq

    calibration = calibration_batches(CALIBRATION_IMAGES)
    exported = torch.export.load(program)
    paths = {name: work / name.replace(" ", "-") for name in ENGINES}
    onnx_fp32 = paths["onnxruntime fp32"] = paths["onnxruntime fp32"].with_suffix(".onnx")
    example = (torch.from_numpy(calibration[0]),)
    torch.onnx.export(exported, example, onnx_fp32, dynamo=True, external_data=False)
    input_name = onnx.load(onnx_fp32).graph.input[0].name

    class Reader(ortq.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    prepared = work / "prepared.onnx"
    ortq.quant_pre_process(str(onnx_fp32), str(prepared))
    paths["onnxruntime int8"] = paths["onnxruntime int8"].with_suffix(".onnx")
    ortq.quantize_static(str(prepared), str(paths["onnxruntime int8"]), Reader(),
                         quant_format=ortq.QuantFormat.QDQ, per_channel=True, reduce_range=True,
                         activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8)

    converted = ov.convert_model(exported)
    paths["openvino fp32"] = paths["openvino fp32"].with_suffix(".xml")
    ov.save_model(converted, paths["openvino fp32"], compress_to_fp16=False)
    nncf.set_log_level(50)
    quantized = nncf.quantize(converted, nncf.Dataset(calibration), subset_size=len(calibration),
                              target_device=nncf.TargetDevice.CPU)
    paths["openvino int8"] = paths["openvino int8"].with_suffix(".xml")
    ov.save_model(quantized, paths["openvino int8"], compress_to_fp16=False)
    return paths


def load(name: str, path: Path, threads: int):
    """A function that runs one batch, loaded as the server would load it."""
    if name.startswith("onnxruntime"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {input_name: batch})[0]
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False,
    })
    request = compiled.create_infer_request()
    return lambda batch: request.infer({0: batch})[0]


def measure(paths: dict[str, Path]) -> dict:
    """Per thread count: each engine's load + first answer, and its per-image latencies (turns)."""
    image = calibration_batches(1)[0]
    results: dict = {}
    for threads in (1, 2):
        runners, loads = {}, {}
        for name in ENGINES:
            started = time.perf_counter()
            runners[name] = load(name, paths[name], threads)
            runners[name](image)
            loads[name] = time.perf_counter() - started
        times: dict[str, list[float]] = {name: [] for name in ENGINES}
        for round_ in range(TIMED_ROUNDS + 3):
            for name in ENGINES:
                started = time.perf_counter()
                runners[name](image)
                if round_ >= 3:
                    times[name].append(time.perf_counter() - started)
        results[str(threads)] = {"load_s": loads, "latency_s": times}
    return results


def facts() -> dict:
    """Installed size and protobuf requirement of each toolchain."""
    sizes, protobuf = {}, {}
    for package in ("onnxruntime", "onnx", "openvino", "nncf"):
        distribution = metadata.distribution(package)
        files = [distribution.locate_file(file) for file in distribution.files or []]
        sizes[package] = sum(Path(file).stat().st_size for file in files if Path(file).is_file()) / 1e6
        requirements = [
            r for r in distribution.requires or [] if r.startswith("protobuf") and "extra" not in r
        ]
        protobuf[package] = requirements[0] if requirements else "none"
        sizes[package + " version"] = distribution.version
    return {"size_mb": sizes, "protobuf": protobuf}


def inside(program: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as folder:
        paths = prepare(program, Path(folder))
        out.write_text(json.dumps({"measure": measure(paths), **facts()}))


# ---------------------------------------------------------------- the report


def report(results: dict) -> str:
    lines = [
        "# Fast CPU engines: ONNX Runtime against OpenVINO",
        "",
        f"`make bench-engines`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, on {os.cpu_count()} cores "
        f"({platform.machine()}, this project's build machine, shared with other work). ResNet50, 133 "
        "classes, "
        f"224 px, one image per inference, {TIMED_ROUNDS} timed rounds, the four engines taking turns "
        f"in each round; int8 calibrated on the same {CALIBRATION_IMAGES} images.",
        "",
        "| engine | threads | p50 (ms) | min (ms) | load + first answer (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for threads, measured in results["measure"].items():
        for name in ENGINES:
            times = measured["latency_s"][name]
            lines.append(f"| {name} | {threads} | {statistics.median(times) * 1000:.1f} | "
                         f"{min(times) * 1000:.1f} | {measured['load_s'][name]:.2f} |")
    sizes, protobuf = results["size_mb"], results["protobuf"]
    lines += [
        "",
        "| package | version | installed (MB) | protobuf |",
        "| --- | --- | --- | --- |",
    ]
    for package in ("onnxruntime", "onnx", "openvino", "nncf"):
        version = sizes[package + " version"]
        lines.append(f"| {package} | {version} | {sizes[package]:.0f} | {protobuf[package]} |")
    speed = []
    for threads, measured in results["measure"].items():
        p50 = {name: statistics.median(times) for name, times in measured["latency_s"].items()}
        ratio = p50["onnxruntime int8"] / p50["openvino int8"]
        speed.append(f"with {threads} thread(s) OpenVINO's int8 p50 is {1000 * p50['openvino int8']:.1f} "
                     f"ms, ONNX Runtime's {1000 * p50['onnxruntime int8']:.1f} ms ({ratio:.2f}x)")
    lines += [
        "",
        f"Choice: **OpenVINO + NNCF**. Speed: {'; '.join(speed)}. The deciding fact is where the "
        "quantization runs: in the training image, where smdebug pins protobuf <= 3.20.3. ONNX Runtime "
        f"requires {protobuf['onnxruntime']} and its quantization tools need `onnx` ({protobuf['onnx']}), "
        f"while OpenVINO's protobuf requirement is {protobuf['openvino']!r} and NNCF's "
        f"{protobuf['nncf']!r}. OpenVINO is the larger runtime; the serving image drops its GPU and NPU "
        "plugins and its readers of other model formats (about 90 MB) and stays within its size goal "
        "(serve.md).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--inside", nargs=2, type=Path, metavar=("PROGRAM", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        inside(*args.inside)
        return

    import torch
    import torchvision

    from classifier import export

    python = venv_python()
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as folder:
        program, out = Path(folder) / "model.pt2", Path(folder) / "results.json"
        torch.manual_seed(0)
        export.export_program(torchvision.models.resnet50(num_classes=NUM_CLASSES), IMAGE_SIZE, program)
        code = os.pathsep.join([str(REPO_ROOT / "code"), str(REPO_ROOT)])
        subprocess.run([str(python), "-m", "scripts.bench.engines", "--inside", str(program), str(out)],
                       cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": code}, check=True)
        text = report(json.loads(out.read_text()))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
