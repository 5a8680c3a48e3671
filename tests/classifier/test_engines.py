"""Which engine serves an artifact (``SERVE_ENGINE``), from the trainer's record and the files present.

Standard library and numpy: these run in the launchers' test environment too."""

from __future__ import annotations

import json

import numpy as np
import pytest

from classifier import artifact, engines
from classifier.engines import FP32, INT8, TORCH, EngineSettingError, choose_engine

ALL = {INT8, FP32, TORCH}


def record(fp32: float, int8: float) -> dict:
    return {
        "fp32": {"test_accuracy": fp32}, "int8": {"test_accuracy": int8},
        engines.DIFFERENCE_KEY: round(100 * (int8 - fp32), 4),
    }


@pytest.mark.parametrize("fp32, int8, bound, expected", [
    (0.90, 0.90, 0.5, INT8),
    (0.90, 0.896, 0.5, INT8),  # 0.4 points below
    (0.90, 0.905, 0.5, INT8),  # int8 better
    (0.90, 0.894, 0.5, FP32),  # 0.6 points below
    (0.90, 0.894, 1.0, INT8),  # a looser bound
    (0.90, 0.899, 0.0, FP32),  # the strictest bound
])
def test_auto_serves_int8_only_within_the_bound(fp32, int8, bound, expected):
    choice = choose_engine("auto", ALL, record(fp32, int8), bound)
    assert choice.engine == expected
    assert f"{100 * int8:.2f}%" in choice.reason and f"bound of {bound:g}" in choice.reason
    assert engines.MAX_DROP_ENV in choice.reason


def test_auto_falls_back_to_fp32_without_an_int8_record_and_to_torch_for_older_artifacts():
    assert choose_engine("auto", ALL, None).engine == FP32
    assert choose_engine("auto", {FP32, TORCH}, record(0.9, 0.9)).engine == FP32
    older = choose_engine("auto", {TORCH}, None)
    assert older.engine == TORCH and artifact.OPENVINO_FP32_FILE in older.reason


def test_an_explicit_engine_is_honoured_and_a_missing_one_named():
    for engine in (INT8, FP32, TORCH):
        assert choose_engine(engine, ALL, record(0.9, 0.5)).engine == engine  # even far below the bound
    with pytest.raises(engines.EngineUnavailable, match=f"no {artifact.OPENVINO_INT8_FILE}.*auto or torch"):
        choose_engine(INT8, {TORCH}, None)
    with pytest.raises(EngineSettingError, match="SERVE_ENGINE='gpu': expected one of auto, int8, fp32"):
        choose_engine("gpu", ALL, None)


@pytest.mark.parametrize("value", ["-1", "lots", "nan", "inf"])
def test_a_bad_bound_is_refused_naming_the_variable(value):
    with pytest.raises(EngineSettingError, match=engines.MAX_DROP_ENV):
        engines.max_drop_points({engines.MAX_DROP_ENV: value})


def test_engine_choice_reads_the_artifact_files_metrics_and_environment(tmp_path):
    for name in (artifact.MODEL_FILE, artifact.OPENVINO_FP32_FILE, artifact.OPENVINO_INT8_FILE):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / artifact.METRICS_FILE).write_text(json.dumps({engines.QUANTIZATION_KEY: record(0.9, 0.89)}))
    assert engines.available_engines(tmp_path) == {TORCH}  # no .bin weights beside the graphs
    for name in (artifact.OPENVINO_FP32_FILE, artifact.OPENVINO_INT8_FILE):
        (tmp_path / artifact.weights_file(name)).write_bytes(b"x")
    assert engines.available_engines(tmp_path) == ALL

    assert engines.engine_choice(tmp_path, {}).engine == FP32  # 1 point below the default bound
    assert engines.engine_choice(tmp_path, {engines.MAX_DROP_ENV: "1.5"}).engine == INT8
    assert engines.engine_choice(tmp_path, {engines.ENGINE_ENV: " Torch "}).engine == TORCH
    (tmp_path / artifact.METRICS_FILE).write_text("{not json")
    assert engines.engine_choice(tmp_path, {}).engine == FP32


def test_worker_threads_and_softmax():
    assert engines.worker_threads({"OMP_NUM_THREADS": "2"}) == 2
    assert engines.worker_threads({"OMP_NUM_THREADS": "zero"}) is None
    probabilities = engines.softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]], dtype=np.float32))
    np.testing.assert_allclose(probabilities, [[0.5, 0.5], [0.25, 0.75]], rtol=1e-6)
