"""What a training job's request asks of the trainer, checked on the trainer itself.

The launcher (``scripts.aws.train_job``) builds the request in the launchers' environment, which
has no torch; these tests need the trainer's: its Debugger hook must follow the DebugHookConfig
the request carries, and the request's metric regexes must read the trainer's real log.
"""

import json
import re

import pytest
from train_helpers import RULE_COLLECTIONS

from classifier import artifact
from scripts.aws import train_job


def spec(**changes) -> train_job.TrainingJobSpec:
    values = dict(
        job_name="classifier-train-contract", image_uri="image", role_arn="arn:aws:iam::1:role/r",
        region="us-east-1", data_uri="s3://b/data", output_uri="s3://b/training", checkpoint_uri="s3://b/c",
    )
    values.update(changes)
    return train_job.TrainingJobSpec(**values)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # smdebug 1.0.34 on current numpy/protobuf
def test_the_hook_config_makes_the_trainers_hook_save_what_each_rule_reads(tmp_path):
    """SageMaker hands our DebugHookConfig to the container as JSON; the trainer's hook follows it."""
    import torch
    import torchvision
    from smdebug import modes
    from smdebug.trials import create_trial

    from classifier.debugger import Debugger

    request = train_job.training_job_request(spec(debugger_save_interval=2, sagemaker_debugger=True))
    config = request["DebugHookConfig"]
    config_file = tmp_path / "debughookconfig.json"
    config_file.write_text(json.dumps({**config, "LocalPath": str(tmp_path / "tensors")}))
    debugger = Debugger.create(config_file, tmp_path / "local-default", save_interval=1000)
    model, criterion = torchvision.models.resnet18(num_classes=3), torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    debugger.watch(model, criterion)
    debugger.train()
    for _ in range(3):  # steps 0 and 2 are saved

        optimizer.zero_grad()
        criterion(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
        optimizer.step()
    debugger.eval()
    with torch.no_grad():
        for _ in range(3):
            criterion(model(torch.randn(2, 3, 32, 32)), torch.tensor([2, 0]))
    debugger.close()

    trial = create_trial(str(tmp_path / "tensors"))
    for rule, collection in RULE_COLLECTIONS.items():
        names = trial.tensor_names(collection=collection)
        assert names, f"{rule} reads {collection}, which holds no tensors"
        assert trial.tensor(names[0]).steps(mode=modes.TRAIN) == [0, 2], collection
    relu_inputs = trial.tensor_names(collection="relu_input")
    assert all(name.endswith(("relu_input_0", "relu_input_1")) for name in relu_inputs)
    loss = trial.tensor(trial.tensor_names(collection="losses")[0])
    assert loss.steps(mode=modes.EVAL) == [0, 1, 2]  # every validation step, for Overfit
    for collection in ("gradients", "weights", "biases"):
        assert trial.tensor(trial.tensor_names(collection=collection)[0]).steps(mode=modes.EVAL) == []


def test_the_requests_metric_regexes_read_the_real_training_log(trained_run, trained_run_log):
    """The shared training run's own log, read as SageMaker reads it, gives its metrics.json figures."""
    report = json.loads((trained_run / "model" / artifact.METRICS_FILE).read_text())
    definitions = train_job.training_job_request(spec())["AlgorithmSpecification"]["MetricDefinitions"]
    read = {d["Name"]: [float(v) for v in re.findall(d["Regex"], trained_run_log)] for d in definitions}
    epochs = report["epochs"]
    assert len(epochs) >= 1
    for name, field in (("train:loss", "train_loss"), ("train:accuracy", "train_accuracy"),
                        ("validation:loss", "valid_loss"), ("validation:accuracy", "valid_accuracy")):
        assert read[name] == pytest.approx([epoch[field] for epoch in epochs], abs=1e-6), name
    assert read["test:loss"] == pytest.approx([report["test"]["test_loss"]], abs=1e-6)
    assert read["test:accuracy"] == pytest.approx([report["test"]["test_accuracy"]], abs=1e-6)
