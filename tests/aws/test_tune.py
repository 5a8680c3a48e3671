"""The tuning launcher: the pure request builder, waiting, and the exact request on a moto server."""

import json
import re
from types import SimpleNamespace

import boto3
import pytest
from aws_helpers import ACCOUNT, BUCKET, REGION, ROLE_ARN, RecordingSession, validate_against_api

from classifier import metrics
from classifier.hyperparameters import SEARCH_SPACE, CategoricalValues, ContinuousRange, IntegerRange
from scripts.aws import jobs, train_job, tune
from scripts.aws.settings import AwsContext, LaunchConfig, LaunchError

CONFIG = LaunchConfig(region=REGION, role_arn=ROLE_ARN, bucket=BUCKET)


def tuning_spec(image: str = "image", **changes) -> tune.TuningJobSpec:
    values = dict(job_name="classifier-tune-test", image_uri=image, role_arn=ROLE_ARN,
                  data_uri=CONFIG.data_uri(), output_uri=CONFIG.output_uri("tuning"))
    values.update(changes)
    return tune.TuningJobSpec(**values)


def test_search_space_becomes_the_apis_parameter_ranges():
    epochs = SEARCH_SPACE["epochs"]
    assert tune.parameter_ranges(tune.tuned_space("Bayesian")) == {
        "ContinuousParameterRanges": [
            {"Name": "learning-rate", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}],
        "IntegerParameterRanges": [{"Name": "epochs", "MinValue": str(epochs.min_value),
                                    "MaxValue": str(epochs.max_value), "ScalingType": "Auto"}],
        "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["32", "64", "128", "256", "512"]}],
    }
    other = {"dropout": ContinuousRange(0.0, 0.5), "depth": IntegerRange(1, 4, "Linear"),
             "optimizer": CategoricalValues(("sgd", "adamw"))}
    ranges = tune.parameter_ranges(other)
    assert ranges["ContinuousParameterRanges"][0]["ScalingType"] == "Auto"
    assert ranges["IntegerParameterRanges"][0] == {
        "Name": "depth", "MinValue": "1", "MaxValue": "4", "ScalingType": "Linear"}
    with pytest.raises(LaunchError, match="unknown range type"):
        tune.parameter_ranges({"x": (1, 2)})


def test_the_request_is_valid_for_the_api_for_every_strategy():
    for strategy in tune.STRATEGIES:
        static = tune.static_hyperparameters(strategy, {})
        spec = tuning_spec(strategy=strategy, static_hyperparameters=static)
        validate_against_api("CreateHyperParameterTuningJob", tune.tuning_job_request(spec))


def test_limits_are_checked_before_anything_is_sent():
    with pytest.raises(LaunchError, match=r"--max-parallel-jobs \(3\) exceeds --max-jobs \(2\)"):
        tuning_spec(max_jobs=2, max_parallel_jobs=3)
    with pytest.raises(LaunchError, match="at least 1"):
        tuning_spec(max_jobs=0)
    with pytest.raises(LaunchError, match="unknown strategy"):
        tuning_spec(strategy="Grid")
    with pytest.raises(LaunchError, match="Hyperband stops trials itself"):
        tuning_spec(strategy="Hyperband", early_stopping="Auto")


def test_hyperband_leaves_epochs_to_its_schedule():
    assert "epochs" not in tune.tuned_space("Hyperband")
    static = tune.static_hyperparameters("Hyperband", {"model-name": "resnet50"})
    assert static == {"model-name": "resnet50", "epochs": str(SEARCH_SPACE["epochs"].max_value)}
    assert tune.early_stopping_type("Hyperband", None) == "Off"
    with pytest.raises(LaunchError, match="Hyperband stops trials itself"):
        tune.early_stopping_type("Hyperband", "Auto")
    assert tune.early_stopping_type("Random", None) == "Auto"


def test_static_hyperparameters_are_checked_with_the_trainer_parser():
    with pytest.raises(LaunchError, match="are tuned"):
        tune.static_hyperparameters("Bayesian", {"learning-rate": "0.01"})
    with pytest.raises(LaunchError, match="unrecognized arguments: --learning_rate"):
        tune.static_hyperparameters("Bayesian", {"learning_rate": "0.01"})
    with pytest.raises(LaunchError, match="model-name"):
        tune.static_hyperparameters("Bayesian", {"model-name": "vgg16"})
    assert tune.static_hyperparameters("Random", {"pretrained": False}) == {"pretrained": "false"}


def test_best_result_merges_static_and_tuned_hyperparameters():
    description = {
        "HyperParameterTuningJobName": "classifier-tune-1",
        "HyperParameterTuningJobStatus": "Completed",
        "TrainingJobDefinition": {
            "StaticHyperParameters": {"model-name": "resnet50", "epochs": "10"},
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/p/tuning/"},
        },
        "BestTrainingJob": {
            "TrainingJobName": "classifier-tune-1-003-abc",
            "TunedHyperParameters": {"learning-rate": "0.0123", "batch-size": "64"},
            "FinalHyperParameterTuningJobObjectiveMetric": {
                "Type": "Minimize", "MetricName": "validation:loss", "Value": 0.42},
        },
    }
    result = tune.best_result(description)
    assert result["hyperparameters"] == {"model-name": "resnet50", "epochs": "10",
                                         "learning-rate": "0.0123", "batch-size": "64"}
    assert result["objective"] == {"metric": "validation:loss", "type": "Minimize", "value": 0.42}
    assert result["model_data"] == f"s3://{BUCKET}/p/tuning/classifier-tune-1-003-abc/output/model.tar.gz"
    # The training launcher reads it back (and checks it with the trainer's parser).
    assert jobs.check_hyperparameters(result["hyperparameters"])["batch-size"] == "64"


def test_a_tuning_job_without_a_winner_is_reported():
    with pytest.raises(LaunchError, match="no best training job"):
        tune.best_result({"HyperParameterTuningJobName": "t", "HyperParameterTuningJobStatus": "Failed",
                          "TrainingJobDefinition": {}})


def test_tuning_request_carries_image_ranges_static_hyperparameters_metrics_and_spot(pushed):
    recording = RecordingSession()
    context = AwsContext(config=CONFIG, session=recording.session, account=ACCOUNT)
    static = tune.static_hyperparameters("Bayesian", {"model-name": "resnet50", "pretrained": "true"})
    resources = jobs.JobResources(instance_type="ml.g4dn.xlarge", max_run_seconds=3600, spot=True)
    spec = tuning_spec(pushed["train"], static_hyperparameters=static, resources=resources,
                       max_jobs=6, max_parallel_jobs=3)
    tune.start(context, spec)

    request = recording.only("CreateHyperParameterTuningJob")
    assert request == tune.tuning_job_request(spec)  # sent exactly as built
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "validation:loss"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 3}
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    ranges = config["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "learning-rate", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]
    assert ranges["CategoricalParameterRanges"] == [
        {"Name": "batch-size", "Values": ["32", "64", "128", "256", "512"]}]
    assert ranges["IntegerParameterRanges"] == [{
        "Name": "epochs", "MinValue": str(SEARCH_SPACE["epochs"].min_value),
        "MaxValue": str(SEARCH_SPACE["epochs"].max_value), "ScalingType": "Auto"}]

    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == pushed["train"]
    assert definition["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert definition["StaticHyperParameters"] == {"model-name": "resnet50", "pretrained": "true"}
    assert definition["RoleArn"] == ROLE_ARN
    assert definition["InputDataConfig"][0]["ChannelName"] == "training"
    assert definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == CONFIG.data_uri()
    assert definition["OutputDataConfig"]["S3OutputPath"] == CONFIG.output_uri("tuning")
    assert definition["ResourceConfig"] == {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1,
                                            "VolumeSizeInGB": jobs.DEFAULT_VOLUME_GB}
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert "CheckpointConfig" not in definition  # trials share no checkpoint prefix
    # Nothing of SageMaker Debugger (a tuning job cannot carry it): each trial's evidence is the
    # trainer's own, in its output.tar.gz, so `make report JOB=<trial>` works on every account.
    assert not [key for key in json.dumps(request).split('"') if key.startswith(("Debug", "Profiler"))]

    # The regexes sent read the trainer's metric lines back; the objective is the validation loss.
    # They are the training job's too, which test_launch_train checks on a real training log.
    sent = definition["AlgorithmSpecification"]["MetricDefinitions"]
    assert sent == train_job.training_job_request(train_job.TrainingJobSpec(
        "j", "image", ROLE_ARN, REGION, "s3://b/d", "s3://b/o", "s3://b/c",
    ))["AlgorithmSpecification"]["MetricDefinitions"]
    log = "\n".join([
        "epoch noise",
        metrics.format_epoch_line(1, 2.5, 0.25, 2.125, 0.375, 0.75),
        metrics.format_epoch_line(2, 1.5, 0.5, 1.0625, 0.625, 0.875),
        metrics.format_test_line(1.25, 0.5, 0.75),
    ])
    read = {d["Name"]: [float(v) for v in re.findall(d["Regex"], log)] for d in sent}
    assert read[config["HyperParameterTuningJobObjective"]["MetricName"]] == [2.125, 1.0625]
    assert read["train:accuracy"] == [0.25, 0.5] and read["test:loss"] == [1.25]
    assert read["validation:top5_accuracy"] == [0.75, 0.875] and read["test:top5_accuracy"] == [0.75]

    # moto stored the job as sent.
    stored = recording.session.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="classifier-tune-test")
    assert stored["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] == pushed["train"]
    assert stored["HyperParameterTuningJobConfig"]["ParameterRanges"] == config["ParameterRanges"]


def test_hyperband_request_sets_its_resource_and_turns_early_stopping_off(pushed):
    recording = RecordingSession()
    context = AwsContext(config=CONFIG, session=recording.session, account=ACCOUNT)
    static = tune.static_hyperparameters("Hyperband", {})
    tune.start(context, tuning_spec(pushed["train"], job_name="classifier-tune-hb", strategy="Hyperband",
                                    static_hyperparameters=static, resources=jobs.JobResources(spot=False),
                                    max_jobs=4, max_parallel_jobs=2))
    request = recording.only("CreateHyperParameterTuningJob")
    config = request["HyperParameterTuningJobConfig"]
    epochs = SEARCH_SPACE["epochs"]
    assert config["Strategy"] == "Hyperband"
    assert config["StrategyConfig"] == {"HyperbandStrategyConfig": {
        "MinResource": epochs.min_value, "MaxResource": epochs.max_value}}
    assert config["TrainingJobEarlyStoppingType"] == "Off"
    assert config["ParameterRanges"].get("IntegerParameterRanges", []) == []
    definition = request["TrainingJobDefinition"]
    assert definition["StaticHyperParameters"] == {"epochs": str(epochs.max_value)}
    assert definition["EnableManagedSpotTraining"] is False
    assert "MaxWaitTimeInSeconds" not in definition["StoppingCondition"]


def test_cli_tunes_waits_and_writes_the_result_file(pushed, tmp_path, capsys):
    result_file = tmp_path / "best.json"
    tune.main(["--strategy", "Random", "--max-jobs", "2", "--max-parallel-jobs", "1", "--job-name",
               "classifier-tune-cli", "--output", str(result_file), "--role-arn", ROLE_ARN,
               "--bucket", BUCKET, "--", "--model-name", "resnet18"])
    assert capsys.readouterr().out.strip() == "classifier-tune-cli"
    stored = boto3.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="classifier-tune-cli")
    assert stored["HyperParameterTuningJobConfig"]["Strategy"] == "Random"
    assert stored["TrainingJobDefinition"]["StaticHyperParameters"] == {"model-name": "resnet18"}
    result = json.loads(result_file.read_text())
    # moto answers with a placeholder best job; the file records it with the static values merged in.
    assert result["tuning_job"] == "classifier-tune-cli"
    assert result["best_training_job"] == stored["BestTrainingJob"]["TrainingJobName"]
    assert result["hyperparameters"]["model-name"] == "resnet18"


def test_fast_file_input_mode_reaches_every_trial(pushed):
    request = tune.tuning_job_request(tuning_spec(input_mode="FastFile"))
    validate_against_api("CreateHyperParameterTuningJob", request)
    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    assert definition["InputDataConfig"][0]["InputMode"] == "FastFile"
    with pytest.raises(LaunchError, match="input mode 'Pipe' is not supported"):
        tune.tuning_job_request(tuning_spec(input_mode="Pipe"))
    tune.main(["--no-wait", "--input-mode", "FastFile", "--job-name", "classifier-tune-ff",
               "--role-arn", ROLE_ARN, "--bucket", BUCKET])
    stored = boto3.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="classifier-tune-ff")
    assert stored["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"


def test_cli_without_waiting_prints_the_job_then_attach_writes_the_result(pushed, tmp_path, capsys):
    result_file = tmp_path / "best.json"
    tune.main(["--no-wait", "--job-name", "classifier-tune-nw", "--output", str(result_file),
               "--role-arn", ROLE_ARN, "--bucket", BUCKET])
    assert capsys.readouterr().out.strip() == "classifier-tune-nw"
    assert not result_file.exists()
    tune.main(["--attach", "classifier-tune-nw", "--output", str(result_file)])
    assert json.loads(result_file.read_text())["tuning_job"] == "classifier-tune-nw"


@pytest.mark.parametrize(("argv", "message"), [
    (["--bucket", BUCKET], "no SageMaker execution role"),
    (["--role-arn", ROLE_ARN, "--bucket", BUCKET, "--image-tag", "nope"], "sagemaker-classifier-train:nope"),
    (["--role-arn", ROLE_ARN, "--bucket", BUCKET, "--data", f"s3://{BUCKET}/empty"], "no data under"),
    (["--role-arn", ROLE_ARN, "--bucket", BUCKET, "--", "--epochs", "3"], "are tuned"),
    (["--role-arn", ROLE_ARN, "--bucket", BUCKET, "--max-jobs", "2", "--max-parallel-jobs", "3"],
     "exceeds --max-jobs"),
])
def test_cli_errors_come_before_any_job_is_created(pushed, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        tune.main(argv)
    assert message in str(exit_info.value.code)
    listed = boto3.client("sagemaker").list_hyper_parameter_tuning_jobs()
    assert listed["HyperParameterTuningJobSummaries"] == []


def test_trials_on_two_instances_carry_the_distribution_settings(pushed):
    resources = jobs.JobResources(instance_type="ml.g5.12xlarge", instance_count=2, spot=False,
                                  s3_data_distribution="ShardedByS3Key")
    spec = tuning_spec(pushed["train"], static_hyperparameters=tune.static_hyperparameters("Bayesian", {}),
                       resources=resources, max_jobs=2, max_parallel_jobs=1)
    request = tune.tuning_job_request(spec)
    validate_against_api("CreateHyperParameterTuningJob", request)
    recording = RecordingSession()
    tune.start(AwsContext(config=CONFIG, session=recording.session, account=ACCOUNT), spec)
    definition = recording.only("CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    assert definition == request["TrainingJobDefinition"]
    assert definition["ResourceConfig"]["InstanceCount"] == 2
    assert definition["StaticHyperParameters"] == {"sagemaker_torch_distributed_enabled": "true"}
    source = definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]
    assert (source["S3Uri"], source["S3DataDistributionType"]) == (CONFIG.data_uri(), "ShardedByS3Key")
    # Every batch size the search may pick (32 ... 512) must divide among the instances.
    with pytest.raises(LaunchError, match=r"batch-size 32 .* 3 training processes"):
        tune.tuning_job_request(tuning_spec(resources=jobs.JobResources(instance_count=3)))


def described(status: str, **fields) -> dict:
    """A DescribeHyperParameterTuningJob answer (the fields ``wait_for`` and ``best_result`` read)."""
    return {"HyperParameterTuningJobName": "classifier-tune-w", "HyperParameterTuningJobStatus": status,
            "TrainingJobStatusCounters": {}, **fields}


BEST = {"TrainingJobName": "classifier-tune-w-002-x", "TunedHyperParameters": {},
        "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "validation:loss", "Value": 0.5}}


def stubbed_context(*answers: dict) -> AwsContext:
    """A context whose SageMaker answers DescribeHyperParameterTuningJob with ``answers``, in order
    (at the AWS boundary: moto's tuning jobs complete at once)."""
    session = boto3.Session(region_name=REGION, aws_access_key_id="t", aws_secret_access_key="t")
    queue = list(answers)

    def answer(params, **_):
        assert json.loads(params["body"]) == {"HyperParameterTuningJobName": "classifier-tune-w"}
        return SimpleNamespace(status_code=200, headers={}), queue.pop(0)

    session.events.register("before-call.sagemaker.DescribeHyperParameterTuningJob", answer)
    return AwsContext(config=CONFIG, session=session, account=ACCOUNT)


def test_waiting_polls_until_the_job_ends_and_prints_each_change(capsys):
    running = described("InProgress", TrainingJobStatusCounters={"InProgress": 2})
    sleeps = []
    context = stubbed_context(
        running, running,
        described("InProgress", TrainingJobStatusCounters={"Completed": 1, "InProgress": 2},
                  BestTrainingJob=BEST),
        described("Completed", TrainingJobStatusCounters={"Completed": 4}, BestTrainingJob=BEST),
    )
    final = tune.wait_for(context, "classifier-tune-w", poll_seconds=7, sleep=sleeps.append)
    assert final["HyperParameterTuningJobStatus"] == "Completed" and sleeps == [7, 7, 7]
    assert capsys.readouterr().err.splitlines() == [
        "tuning job classifier-tune-w: InProgress; trials: 2 running",
        "tuning job classifier-tune-w: InProgress; trials: 1 completed, 2 running; "
        "best validation:loss so far 0.5",
        "tuning job classifier-tune-w: Completed; trials: 4 completed; best validation:loss so far 0.5",
    ]


def test_a_failed_tuning_job_is_reported_with_sagemakers_reason():
    context = stubbed_context(described("Failed", FailureReason="ClientError: no trial could start"))
    with pytest.raises(LaunchError, match="classifier-tune-w failed: ClientError: no trial could start"):
        tune.wait_for(context, "classifier-tune-w", sleep=pytest.fail)


def test_a_stopped_tuning_job_still_gives_its_best_trial(tmp_path):
    stopped = described("Stopped", BestTrainingJob=BEST, TrainingJobDefinition={
        "StaticHyperParameters": {"model-name": "resnet50"}, "OutputDataConfig": {"S3OutputPath": "s3://b/tuning"}})
    description = tune.wait_for(stubbed_context(stopped), "classifier-tune-w", sleep=pytest.fail)
    result = tune.write_result(description, tmp_path / "best.json")
    assert result["best_training_job"] == "classifier-tune-w-002-x"
    assert json.loads((tmp_path / "best.json").read_text())["model_data"] == (
        "s3://b/tuning/classifier-tune-w-002-x/output/model.tar.gz")


def test_ctrl_c_while_waiting_leaves_the_job_running_and_says_how_to_attach(pushed, monkeypatch, tmp_path):
    def interrupted(*_, **__):
        raise KeyboardInterrupt
    monkeypatch.setattr(tune, "wait_for", interrupted)
    hint = "the tuning job goes on: python -m scripts.aws.tune --attach classifier-tune-i"
    with pytest.raises(SystemExit, match=re.escape(hint)):
        tune.main(["--job-name", "classifier-tune-i", "--output", str(tmp_path / "best.json"),
                   "--role-arn", ROLE_ARN, "--bucket", BUCKET])
    stored = boto3.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="classifier-tune-i")
    assert stored["HyperParameterTuningJobName"] == "classifier-tune-i"
    assert not (tmp_path / "best.json").exists()
