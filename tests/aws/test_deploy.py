"""Deployment: pure request builders, create / unchanged / update / teardown on a moto server."""

import json
import subprocess

import boto3
import pytest
from aws_helpers import (
    ACCOUNT,
    BUCKET,
    REGION,
    ROLE_ARN,
    RecordingSession,
    UpdateEndpointOnMoto,
    seed_endpoint_result,
    validate_against_api,
)

from scripts import REPO_ROOT
from scripts.aws import deploy
from scripts.aws.settings import AwsContext, LaunchConfig
from scripts.containers import images

CONFIG = LaunchConfig(region=REGION, role_arn=ROLE_ARN, bucket=BUCKET)
SERVE_IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{images.repository('serve')}@sha256:{'b' * 64}"
MODEL_A = f"s3://{BUCKET}/p/training/job-a/output/model.tar.gz"
MODEL_B = f"s3://{BUCKET}/p/training/job-b/output/model.tar.gz"
PREDICTION = json.dumps({"predictions": [{"label": "Akita", "class_index": 3, "probability": 0.5}]})
SMOKE_TEXT = b"smoke image (text: moto's server decodes bodies as UTF-8)"


def test_names_are_a_hash_of_what_is_deployed():
    a = deploy.Deployment("dogs", SERVE_IMAGE, MODEL_A)
    assert a.resource_name() == deploy.Deployment("dogs", SERVE_IMAGE, MODEL_A).resource_name()
    others = [deploy.Deployment("dogs", SERVE_IMAGE, MODEL_B),
              deploy.Deployment("dogs", SERVE_IMAGE, MODEL_A, instance_type="ml.c5.xlarge"),
              deploy.Deployment("dogs", SERVE_IMAGE, MODEL_A, environment=(("A", "1"),))]
    assert len({a.resource_name(), *(o.resource_name() for o in others)}) == 4
    assert a.resource_name().startswith("dogs-")
    assert len(deploy.Deployment("e" * 80, SERVE_IMAGE, MODEL_A).resource_name()) == 63


def test_model_and_endpoint_config_requests():
    deployment = deploy.Deployment("dogs", SERVE_IMAGE, MODEL_A, "ml.c5.large", 2,
                                   (("SAGEMAKER_MODEL_SERVER_WORKERS", "2"),))
    model = deploy.model_request(deployment, ROLE_ARN)
    validate_against_api("CreateModel", model)
    assert model["PrimaryContainer"] == {"Image": SERVE_IMAGE, "ModelDataUrl": MODEL_A,
                                         "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}}
    assert model["ExecutionRoleArn"] == ROLE_ARN
    config = deploy.endpoint_config_request(deployment)
    validate_against_api("CreateEndpointConfig", config)
    assert config["ProductionVariants"] == [{
        "VariantName": "AllTraffic", "ModelName": deployment.resource_name(), "InstanceType": "ml.c5.large",
        "InitialInstanceCount": 2, "InitialVariantWeight": 1.0}]


@pytest.mark.parametrize(("status", "config", "action"), [
    ("InService", "c1", "unchanged"), ("InService", "c0", "update"), ("Updating", "c0", "wait"),
    ("Creating", "c1", "wait"), ("Failed", "c1", "recreate"), ("OutOfService", "c0", "recreate"),
])
def test_endpoint_action(status, config, action):
    assert deploy.endpoint_action(None, "c1") == "create"
    assert deploy.endpoint_action({"EndpointStatus": status, "EndpointConfigName": config}, "c1") == action


def test_environment_pairs_are_checked():
    assert deploy.parse_environment(["B=2", "A=x=y"]) == (("A", "x=y"), ("B", "2"))
    with pytest.raises(deploy.LaunchError, match="NAME=VALUE"):
        deploy.parse_environment(["oops"])


def created(recording):
    return [name for name, _ in recording.calls if name.startswith(("Create", "Update", "Delete"))]


def test_deploy_creates_then_changes_nothing_then_updates_then_tears_down(aws):
    recording = RecordingSession()
    updates = UpdateEndpointOnMoto(recording)
    context = AwsContext(config=CONFIG, session=recording.session, account=ACCOUNT)
    sagemaker = recording.session.client("sagemaker")
    first = deploy.Deployment("dogs", SERVE_IMAGE, MODEL_A)

    action, _ = deploy.deploy(context, first)
    assert action == "create"
    assert created(recording) == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    assert recording.only("CreateModel") == deploy.model_request(first, ROLE_ARN)
    assert recording.only("CreateEndpointConfig") == deploy.endpoint_config_request(first)
    endpoint = sagemaker.describe_endpoint(EndpointName="dogs")
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == first.resource_name()
    stored = sagemaker.describe_model(ModelName=first.resource_name())
    assert stored["PrimaryContainer"]["Image"] == SERVE_IMAGE
    assert stored["PrimaryContainer"]["ModelDataUrl"] == MODEL_A

    recording.calls.clear()
    assert deploy.deploy(context, first)[0] == "unchanged"
    assert created(recording) == []

    second = deploy.Deployment("dogs", SERVE_IMAGE, MODEL_B)
    action, log = deploy.deploy(context, second)
    assert action == "update"
    assert updates.calls == [{"EndpointName": "dogs", "EndpointConfigName": second.resource_name()}]
    assert created(recording) == ["CreateModel", "CreateEndpointConfig", "UpdateEndpoint",
                                  "DeleteEndpointConfig", "DeleteModel"]
    assert sagemaker.describe_endpoint(EndpointName="dogs")["EndpointConfigName"] == second.resource_name()
    assert [m["ModelName"] for m in sagemaker.list_models()["Models"]] == [second.resource_name()]
    assert f"model {first.resource_name()}" in log[-1]

    deleted = deploy.teardown(context, "dogs")
    assert deleted == ["endpoint dogs", f"endpoint config {second.resource_name()}",
                       f"model {second.resource_name()}"]
    assert sagemaker.list_endpoints()["Endpoints"] == []
    assert sagemaker.list_endpoint_configs()["EndpointConfigs"] == []
    assert sagemaker.list_models()["Models"] == []
    assert deploy.teardown(context, "dogs") == []


def test_a_failed_update_is_reported_and_the_serving_config_is_kept(aws):
    recording = RecordingSession()
    UpdateEndpointOnMoto(recording, roll_back=True)
    context = AwsContext(config=CONFIG, session=recording.session, account=ACCOUNT)
    first, second = (deploy.Deployment("dogs", SERVE_IMAGE, model) for model in (MODEL_A, MODEL_B))
    deploy.deploy(context, first)
    with pytest.raises(deploy.LaunchError, match=f"still serves {first.resource_name()}"):
        deploy.deploy(context, second)
    sagemaker = recording.session.client("sagemaker")
    assert sagemaker.describe_endpoint_config(EndpointConfigName=first.resource_name())
    assert sagemaker.describe_model(ModelName=first.resource_name())


def completed_training_job(name):
    boto3.client("sagemaker").create_training_job(
        TrainingJobName=name, RoleArn=ROLE_ARN,
        AlgorithmSpecification={"TrainingImage": "train-image", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/sagemaker-classifier/training"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
    )
    return f"s3://{BUCKET}/sagemaker-classifier/training/{name}/output/model.tar.gz"


def test_cli_deploys_the_recorded_training_job_and_smoke_tests_it(pushed, tmp_path, capsys):
    model_data = completed_training_job("classifier-train-1")
    record = tmp_path / "job.json"
    record.write_text(json.dumps({"training_job": "classifier-train-1"}))
    smoke = tmp_path / "smoke.jpg"
    smoke.write_bytes(SMOKE_TEXT)
    seed_endpoint_result(boto3.client("sagemaker").meta.endpoint_url, PREDICTION)
    deploy.main(["deploy", "--endpoint", "dogs", "--record", str(record), "--smoke-image", str(smoke),
                 "--role-arn", ROLE_ARN])
    captured = capsys.readouterr()
    assert captured.out.strip() == "dogs"
    assert "InService (create)" in captured.err and "1. Akita" in captured.err
    sagemaker = boto3.client("sagemaker")
    config = sagemaker.describe_endpoint(EndpointName="dogs")["EndpointConfigName"]
    model = sagemaker.describe_model(ModelName=config)["PrimaryContainer"]
    assert model == {"Image": pushed["serve"], "ModelDataUrl": model_data, "Environment": {}}


def test_cli_uploads_a_local_model_tar_once(pushed, tmp_path, capsys):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"not really a tarball")
    smoke = tmp_path / "smoke.jpg"
    smoke.write_bytes(SMOKE_TEXT)
    seed_endpoint_result(boto3.client("sagemaker").meta.endpoint_url, PREDICTION)
    argv = ["deploy", "--model-tar", str(archive), "--smoke-image", str(smoke), "--role-arn", ROLE_ARN,
            "--bucket", BUCKET]
    deploy.main(argv)
    deploy.main(argv)
    assert "InService (unchanged)" in capsys.readouterr().err
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="sagemaker-classifier/models/")
    keys = [o["Key"] for o in listed["Contents"]]
    assert len(keys) == 1
    config = boto3.client("sagemaker").describe_endpoint(EndpointName=deploy.DEFAULT_ENDPOINT)
    model = boto3.client("sagemaker").describe_model(ModelName=config["EndpointConfigName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://{BUCKET}/{keys[0]}"


@pytest.mark.parametrize(("argv", "message"), [
    (["deploy", "--model-data", MODEL_A], "no SageMaker execution role"),
    (["deploy", "--model-data", MODEL_A, "--role-arn", ROLE_ARN, "--image-tag", "old"],
     "sagemaker-classifier-serve:old is not in ECR"),
    (["deploy", "--training-job", "nope", "--role-arn", ROLE_ARN], "training job 'nope' not found"),
    (["deploy", "--record", "missing.json", "--role-arn", ROLE_ARN], "no model given"),
    (["deploy", "--model-tar", "missing.tar.gz", "--role-arn", ROLE_ARN, "--bucket", BUCKET],
     "model archive not found"),
])
def test_cli_errors_come_before_anything_is_created(pushed, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        deploy.main(argv)
    assert message in str(exit_info.value.code)
    sagemaker = boto3.client("sagemaker")
    assert sagemaker.list_models()["Models"] == [] and sagemaker.list_endpoints()["Endpoints"] == []


def test_deploy_sh_is_a_thin_shell_over_the_module(pushed, tmp_path):
    completed_training_job("classifier-train-2")
    smoke = tmp_path / "smoke.jpg"
    smoke.write_bytes(SMOKE_TEXT)
    seed_endpoint_result(boto3.client("sagemaker").meta.endpoint_url, PREDICTION)
    script = REPO_ROOT / "scripts" / "deploy.sh"
    up = subprocess.run([script, "--training-job", "classifier-train-2", "--endpoint", "shell-dogs",
                         "--smoke-image", str(smoke), "--role-arn", ROLE_ARN],
                        capture_output=True, text=True, cwd=tmp_path, check=False)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == "shell-dogs"
    down = subprocess.run([script, "teardown", "--endpoint", "shell-dogs"],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert down.returncode == 0, down.stderr
    assert "deleted endpoint shell-dogs" in down.stderr
    assert boto3.client("sagemaker").list_endpoints()["Endpoints"] == []
