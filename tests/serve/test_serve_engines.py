"""The default engine: the server picks OpenVINO int8 for the shared training run's artifact, says so
once, and serves the trainer's evaluation of that engine; a setting that means nothing stops it with
the reason; an engine the artifact lacks is reported on /ping; older artifacts are served with torch."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from serve_helpers import ServerProcess

from classifier import artifact, engines, protocol, quantize
from classifier.data import load_splits
from classifier.preprocessing import PreprocessConfig, eval_array, load_image

NUM_CLASSES = 3
BATCH = 8


@pytest.fixture(scope="module")
def model_dir(trained_run):
    return trained_run / "model"


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """The default engine (SERVE_ENGINE unset: auto), 2 workers x 1 thread."""
    log = tmp_path_factory.mktemp("serve-engines") / "server.log"
    env = {engines.ENGINE_ENV: "", "SAGEMAKER_MODEL_SERVER_WORKERS": "2", "SERVE_TORCH_THREADS": "1"}
    process = ServerProcess(model_dir, log, env)
    try:
        process.watch_ping(lambda status, body: body.get("workers_ready") == 2)  # both workers loaded
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def test_split(sample_dataset):
    return load_splits({"training": sample_dataset}, max_bad_fraction=0.0).splits["test"].samples


def probabilities_of(top: list[dict]) -> np.ndarray:
    row = np.zeros(NUM_CLASSES, dtype=np.float32)
    for item in top:
        row[item[protocol.CLASS_INDEX_FIELD]] = item[protocol.PROBABILITY_FIELD]
    return row


def test_auto_chooses_int8_and_logs_the_choice_and_its_reason_once(server, model_dir):
    expected = engines.engine_choice(model_dir, {})
    assert expected.engine == engines.INT8  # the shared run's int8 model is within the bound
    log = server.log_text()
    assert log.count(engines.CHOICE_LOG_PREFIX) == 1
    assert expected.log_line() in log
    assert log.count(f"(engine {engines.INT8})") == 2  # each worker loaded the int8 model
    assert server.ping()[0] == 200


def test_served_probabilities_are_the_trainers_evaluation_of_the_int8_engine(
    server, model_dir, test_split
):
    """Every test image served equals the int8 engine's probabilities in this process, and the served
    top-1 accuracy is the int8 test accuracy the trainer recorded."""
    config = PreprocessConfig.load(model_dir / artifact.PREPROCESS_FILE)
    evaluation = quantize.evaluate(engines.load_engine(model_dir, engines.INT8), test_split, config)
    images = [path.read_bytes() for path, _ in test_split]
    served = []
    for start in range(0, len(images), BATCH):
        body = protocol.json_request(images[start:start + BATCH], k=NUM_CLASSES, batch=True)
        response = server.invoke(body, protocol.JSON)
        assert response.status_code == 200, response.text
        served += response.json()[protocol.PREDICTIONS_FIELD]
    got = np.stack([probabilities_of(top) for top in served])
    np.testing.assert_allclose(got, evaluation.probabilities, atol=1e-5)

    top_1 = np.array([top[0][protocol.CLASS_INDEX_FIELD] for top in served])
    labels = np.array([label for _, label in test_split])
    record = json.loads((model_dir / artifact.METRICS_FILE).read_text())[engines.QUANTIZATION_KEY]
    assert float((top_1 == labels).mean()) == record["int8"]["test_accuracy"]


def test_a_single_jpeg_is_served_by_int8_as_one_top_k(server, model_dir, test_split):
    body = test_split[0][0].read_bytes()
    response = server.invoke(body, "image/jpeg")
    assert response.status_code == 200, response.text
    config = PreprocessConfig.load(model_dir / artifact.PREPROCESS_FILE)
    batch = eval_array(load_image(io.BytesIO(body)), config)[np.newaxis]
    expected = engines.load_engine(model_dir, engines.INT8).probabilities(batch)[0]
    served = probabilities_of(response.json()[protocol.PREDICTIONS_FIELD])
    np.testing.assert_allclose(served, expected, atol=1e-5)


@pytest.mark.parametrize("env, words", [
    ({engines.ENGINE_ENV: "gpu"}, "SERVE_ENGINE='gpu': expected one of auto, int8, fp32, torch"),
    ({engines.MAX_DROP_ENV: "-1"}, f"{engines.MAX_DROP_ENV} must be a number of points >= 0"),
])
def test_bad_engine_settings_stop_the_server_with_status_2_and_the_reason(model_dir, tmp_path, env, words):
    server = ServerProcess(model_dir, tmp_path / "server.log", env)
    assert server.process.wait(timeout=120) == 2
    server.stop()
    assert words in server.log_text()


def test_an_older_artifact_is_served_with_torch_and_int8_forced_on_it_is_reported_unhealthy(
    model_dir, tmp_path
):
    older = tmp_path / "older"
    shutil.copytree(model_dir, older)
    shutil.rmtree(older / "openvino")
    assert engines.engine_choice(older, {}).engine == engines.TORCH

    forced = ServerProcess(older, tmp_path / "forced.log", {engines.ENGINE_ENV: engines.INT8})
    try:
        seen = forced.watch_ping(lambda status, body: body["status"] == "Unhealthy")
    finally:
        forced.stop()
    assert all(status == 503 for status, _ in seen)
    assert f"no {artifact.OPENVINO_INT8_FILE}" in seen[-1][1]["reason"], seen[-1]
