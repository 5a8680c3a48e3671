"""Deploy the classifier to a SageMaker real-time endpoint, or tear it down (``scripts/deploy.sh``).

    python -m scripts.aws.deploy deploy [--endpoint NAME] [--model-data s3://.../model.tar.gz
                                    | --model-tar model.tar.gz | --training-job NAME]
    python -m scripts.aws.deploy teardown [--endpoint NAME]

Without a model source it deploys the job recorded by ``scripts.aws.train_job``
(``runs/aws/last-training-job.json``). A deployment is the serving image (pinned to its ECR
digest), the model artifact, the instance type and count: its model and endpoint config are named
after a hash of those, so deploying the same thing twice changes nothing, and deploying something
new creates a new model and config and updates the endpoint to it (no downtime), then deletes the
ones it replaced. It waits for InService, sends a smoke request with ``scripts.aws.invoke`` and prints
the endpoint name. Teardown deletes the endpoint, its config and its model.

SDK v3's ``ModelBuilder.deploy(update_endpoint=True)`` fails in 3.27, so this uses boto3; the
request builders are pure functions.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts.aws import ecr, invoke, settings
from scripts.aws.settings import AwsContext, LaunchError
from scripts.containers import images

DEFAULT_ENDPOINT = settings.DEFAULT_PREFIX
DEFAULT_INSTANCE_TYPE = "ml.m5.large"  # the serving image is CPU-only
VARIANT = "AllTraffic"
NAME_LIMIT = 63


@dataclass(frozen=True)
class Deployment:
    """What an endpoint serves; equal deployments get equal resource names."""

    endpoint: str
    image_uri: str
    model_data: str
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    environment: tuple[tuple[str, str], ...] = ()

    def fingerprint(self) -> str:
        content = json.dumps([self.image_uri, self.model_data, self.instance_type, self.instance_count,
                              sorted(self.environment)])
        return hashlib.sha256(content.encode()).hexdigest()[:10]

    def resource_name(self) -> str:
        """The model's and the endpoint config's name: ``<endpoint>-<fingerprint>``."""
        suffix = "-" + self.fingerprint()
        return self.endpoint[: NAME_LIMIT - len(suffix)].rstrip("-") + suffix


def model_request(deployment: Deployment, role_arn: str) -> dict:
    """CreateModel parameters."""
    return {
        "ModelName": deployment.resource_name(),
        "ExecutionRoleArn": role_arn,
        "PrimaryContainer": {
            "Image": deployment.image_uri,
            "ModelDataUrl": deployment.model_data,
            "Environment": dict(deployment.environment),
        },
        "Tags": [{"Key": "endpoint", "Value": deployment.endpoint}],
    }


def endpoint_config_request(deployment: Deployment) -> dict:
    """CreateEndpointConfig parameters: one variant taking all the traffic."""
    return {
        "EndpointConfigName": deployment.resource_name(),
        "ProductionVariants": [{
            "VariantName": VARIANT,
            "ModelName": deployment.resource_name(),
            "InstanceType": deployment.instance_type,
            "InitialInstanceCount": deployment.instance_count,
            "InitialVariantWeight": 1.0,
        }],
        "Tags": [{"Key": "endpoint", "Value": deployment.endpoint}],
    }


def endpoint_action(current: dict | None, config_name: str) -> str:
    """What to do with the endpoint as it is: ``create``, ``unchanged``, ``update``, ``recreate``
    (a failed or out-of-service endpoint cannot be updated) or ``wait`` (it is changing)."""
    if current is None:
        return "create"
    status = current["EndpointStatus"]
    if status in ("Failed", "OutOfService"):
        return "recreate"
    if status != "InService":
        return "wait"
    return "unchanged" if current["EndpointConfigName"] == config_name else "update"


# ---------------------------------------------------------------- AWS edges


def _not_found(error) -> bool:
    # SageMaker answers a missing resource with a ValidationException ("Could not find model ...",
    # "Requested resource not found.") or ResourceNotFound.
    code, message = error.response["Error"]["Code"], error.response["Error"].get("Message", "").lower()
    return code == "ResourceNotFound" or (code == "ValidationException" and any(
        phrase in message for phrase in ("could not find", "not found", "does not exist")))


def describe(sagemaker, operation: str, **name) -> dict | None:
    """A Describe* call that answers None when the resource does not exist."""
    try:
        return getattr(sagemaker, operation)(**name)
    except sagemaker.exceptions.ClientError as error:
        if _not_found(error):
            return None
        raise


def model_data_of_training_job(sagemaker, job_name: str) -> str:
    job = describe(sagemaker, "describe_training_job", TrainingJobName=job_name)
    if job is None:
        raise LaunchError(f"training job {job_name!r} not found")
    if job["TrainingJobStatus"] != "Completed":
        raise LaunchError(f"training job {job_name} is {job['TrainingJobStatus']}, not Completed: "
                          f"{job.get('FailureReason', 'wait for it to finish')}")
    return job["ModelArtifacts"]["S3ModelArtifacts"]


def upload_model_tar(context: AwsContext, path: Path) -> str:
    """Uploads a local ``model.tar.gz`` under a key made of its SHA-256 (skipped if already there)."""
    if not path.is_file():
        raise LaunchError(f"model archive not found: {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    uri = context.config.model_upload_uri(digest[:16])
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    s3 = context.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    if not listed.get("KeyCount"):
        s3.upload_file(str(path), bucket, key)
    return uri


def settled_endpoint(sagemaker, endpoint: str) -> dict | None:
    """The endpoint once it is no longer creating, updating or deleting (None once deleted)."""
    import botocore.exceptions

    current = describe(sagemaker, "describe_endpoint", EndpointName=endpoint)
    deleting = current is not None and current["EndpointStatus"] == "Deleting"
    waiter = sagemaker.get_waiter("endpoint_deleted" if deleting else "endpoint_in_service")
    with contextlib.suppress(botocore.exceptions.WaiterError):  # a failed endpoint ends the wait too
        waiter.wait(EndpointName=endpoint, WaiterConfig={"Delay": 30, "MaxAttempts": 120})
    return describe(sagemaker, "describe_endpoint", EndpointName=endpoint)


def wait_in_service(sagemaker, endpoint: str) -> dict:
    current = settled_endpoint(sagemaker, endpoint)
    if current is None or current["EndpointStatus"] != "InService":
        status = current["EndpointStatus"] if current else "deleted"
        reason = (current or {}).get("FailureReason", "see the endpoint's CloudWatch logs")
        raise LaunchError(f"endpoint {endpoint} is {status}: {reason}")
    return current


def delete_config_and_models(sagemaker, config_name: str) -> list[str]:
    """Deletes an endpoint config and the models of its variants; returns what it deleted."""
    config = describe(sagemaker, "describe_endpoint_config", EndpointConfigName=config_name)
    if config is None:
        return []
    sagemaker.delete_endpoint_config(EndpointConfigName=config_name)
    deleted = [f"endpoint config {config_name}"]
    for variant in config["ProductionVariants"]:
        if describe(sagemaker, "describe_model", ModelName=variant["ModelName"]) is not None:
            sagemaker.delete_model(ModelName=variant["ModelName"])
            deleted.append(f"model {variant['ModelName']}")
    return deleted


def deploy(context: AwsContext, deployment: Deployment) -> tuple[str, list[str]]:
    """Creates or updates the endpoint to serve ``deployment``; returns the action and the log."""
    sagemaker = context.client("sagemaker")
    name = deployment.resource_name()
    log = []
    if describe(sagemaker, "describe_model", ModelName=name) is None:
        sagemaker.create_model(**model_request(deployment, context.config.role_arn))
        log.append(f"created model {name}")
    if describe(sagemaker, "describe_endpoint_config", EndpointConfigName=name) is None:
        sagemaker.create_endpoint_config(**endpoint_config_request(deployment))
        log.append(f"created endpoint config {name}")
    current = describe(sagemaker, "describe_endpoint", EndpointName=deployment.endpoint)
    action = endpoint_action(current, name)
    if action == "wait":  # another deployment is under way: let it settle, then decide
        log.append(f"endpoint {deployment.endpoint} is {current['EndpointStatus']}; waiting for it")
        current = settled_endpoint(sagemaker, deployment.endpoint)
        action = endpoint_action(current, name)
    if action == "recreate":
        sagemaker.delete_endpoint(EndpointName=deployment.endpoint)
        sagemaker.get_waiter("endpoint_deleted").wait(EndpointName=deployment.endpoint)
        log.append(f"deleted the failed endpoint {deployment.endpoint}")
    if action in ("create", "recreate"):
        sagemaker.create_endpoint(EndpointName=deployment.endpoint, EndpointConfigName=name,
                                  Tags=[{"Key": "endpoint", "Value": deployment.endpoint}])
        log.append(f"creating endpoint {deployment.endpoint}")
    elif action == "update":
        sagemaker.update_endpoint(EndpointName=deployment.endpoint, EndpointConfigName=name)
        log.append(f"updating endpoint {deployment.endpoint} from {current['EndpointConfigName']} to {name}")
    serving = wait_in_service(sagemaker, deployment.endpoint)
    if serving["EndpointConfigName"] != name:  # a failed update rolls back to the old config
        raise LaunchError(f"endpoint {deployment.endpoint} still serves {serving['EndpointConfigName']}: "
                          f"the update to {name} failed: {serving.get('FailureReason', 'no reason given')}")
    if action in ("update", "recreate") and current["EndpointConfigName"] != name:
        log += delete_config_and_models(sagemaker, current["EndpointConfigName"])
    return action, log


def teardown(context: AwsContext, endpoint: str) -> list[str]:
    """Deletes the endpoint, then its endpoint config and model."""
    sagemaker = context.client("sagemaker")
    current = describe(sagemaker, "describe_endpoint", EndpointName=endpoint)
    if current is None:
        return []
    sagemaker.delete_endpoint(EndpointName=endpoint)
    sagemaker.get_waiter("endpoint_deleted").wait(EndpointName=endpoint)
    deleted = [f"endpoint {endpoint}"]
    return deleted + delete_config_and_models(sagemaker, current["EndpointConfigName"])


def smoke_image() -> bytes:
    """A plain 224 px JPEG: the smoke request checks the whole path, not the model's judgement."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (224, 224), (120, 96, 72)).save(buffer, "JPEG")
    return buffer.getvalue()


def model_source(args, context: AwsContext) -> str:
    sagemaker = context.client("sagemaker")
    if args.model_data:
        if not args.model_data.startswith("s3://"):
            raise LaunchError(f"--model-data must be an s3:// URI, got {args.model_data!r}")
        return args.model_data
    if args.model_tar:
        return upload_model_tar(context, args.model_tar)
    job = args.training_job
    if job is None:
        if not args.record.is_file():
            raise LaunchError(f"no model given and no {args.record}: pass --model-data, --model-tar "
                              "or --training-job (or run `make train` first)")
        job = json.loads(args.record.read_text())["training_job"]
    return model_data_of_training_job(sagemaker, job)


def parse_environment(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    environment = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise LaunchError(f"--env takes NAME=VALUE, got {pair!r}")
        environment.append((name, value))
    return tuple(sorted(environment))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("deploy", help="create or update the endpoint, wait, smoke-test")
    source = up.add_mutually_exclusive_group()
    source.add_argument("--model-data", help="s3:// URI of a model.tar.gz")
    source.add_argument("--model-tar", type=Path, help="a local model.tar.gz (uploaded to the bucket)")
    source.add_argument("--training-job", help="a completed training job whose model to serve")
    up.add_argument("--record", type=Path, default=settings.LAST_TRAINING_JOB_FILE,
                    help="the training launcher's record, used when no model is given")
    up.add_argument("--image-tag", default=images.LATEST, help="tag of the pushed serving image")
    up.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
    up.add_argument("--instance-count", type=int, default=1)
    up.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="container environment, e.g. SAGEMAKER_MODEL_SERVER_WORKERS=2")
    up.add_argument("--smoke-image", type=Path, help="the image of the smoke request (default: generated)")
    down = commands.add_parser("teardown", help="delete the endpoint, its config and its model")
    for command in (up, down):
        command.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="the endpoint name")
        settings.add_config_arguments(command)
    args = parser.parse_args(argv)
    try:
        if args.command == "teardown":
            context = settings.connect(args)
            deleted = teardown(context, args.endpoint)
            print("\n".join(f"deleted {what}" for what in deleted) or f"no endpoint {args.endpoint}",
                  file=sys.stderr)
            return
        environment = parse_environment(args.env)
        smoke = args.smoke_image.read_bytes() if args.smoke_image else smoke_image()
        smoke_type = invoke.content_type_for(args.smoke_image or "smoke.jpg")
        context = settings.connect(args, needs=("role_arn", "bucket") if args.model_tar else ("role_arn",))
        deployment = Deployment(
            endpoint=args.endpoint,
            image_uri=ecr.image_for(context, "serve", args.image_tag),
            model_data=model_source(args, context),
            instance_type=args.instance_type,
            instance_count=args.instance_count,
            environment=environment,
        )
        print(f"deploying {deployment.model_data} on {deployment.image_uri}", file=sys.stderr)
        action, log = deploy(context, deployment)
        for line in log:
            print(line, file=sys.stderr)
        result = invoke.predict(smoke, endpoint=args.endpoint, content_type=smoke_type,
                                runtime=context.client("sagemaker-runtime"))
        print(f"endpoint {args.endpoint} is InService ({action}); smoke request answered:\n"
              f"{invoke.format_predictions(result)}", file=sys.stderr)
    except (*settings.USER_ERRORS, invoke.InvokeError, OSError) as error:
        sys.exit(f"error: {error}")
    print(args.endpoint)


if __name__ == "__main__":
    main()
