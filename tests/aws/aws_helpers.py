"""Helpers for the launcher tests: account constants, a request recorder, moto seeding.

Requests are captured as botocore receives them, through the session's event hooks, so a
test sees the exact API parameters a launcher sent (moto's describe calls do not echo all of them).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import boto3
import botocore.session
import botocore.validate

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/SageMakerExecution"
BUCKET = "classifier-test-bucket"


def seed_endpoint_result(moto_url: str, body: str, content_type: str = "application/json") -> None:
    """Queues what moto's sagemaker-runtime answers to the next new invoke_endpoint request."""
    payload = {"account_id": ACCOUNT, "region": REGION, "results": [
        {"Body": body, "ContentType": content_type, "InvokedProductionVariant": "AllTraffic",
         "CustomAttributes": ""},
    ]}
    request = urllib.request.Request(
        f"{moto_url}/moto-api/static/sagemaker/endpoint-results", data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    urllib.request.urlopen(request).close()


class RecordingSession:
    """A boto3 session whose clients record every API call: ``calls`` holds (operation, params)."""

    def __init__(self, region: str = REGION):
        self.session = boto3.Session(region_name=region)
        self.calls: list[tuple[str, dict]] = []
        self.session.events.register("provide-client-params", self._record)

    def _record(self, params, model, **_):
        self.calls.append((model.name, json.loads(json.dumps(params, default=str))))

    def requests(self, operation: str) -> list[dict]:
        return [params for name, params in self.calls if name == operation]

    def only(self, operation: str) -> dict:
        found = self.requests(operation)
        assert len(found) == 1, f"expected one {operation} call, got {len(found)}"
        return found[0]


def validate_against_api(operation: str, request: dict) -> None:
    """Checks a SageMaker request with botocore's model of the real API (no call is made)."""
    model = botocore.session.get_session().get_service_model("sagemaker").operation_model(operation)
    report = botocore.validate.ParamValidator().validate(request, model.input_shape)
    assert not report.has_errors(), report.generate_report()


def put_fake_image(ecr, repository: str, tag: str) -> str:
    """Registers an image manifest in (moto's) ECR under ``tag``; returns its digest."""
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                   "digest": "sha256:" + "0" * 64},
        "layers": [],
    })
    ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag=tag)
    found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    return found["imageDetails"][0]["imageDigest"]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class UpdateEndpointOnMoto:
    """Answers UpdateEndpoint, which moto lacks, at the AWS boundary: records the call and makes
    moto's endpoint use the new config (as SageMaker does once the update is in service), or,
    with ``roll_back``, leaves it on the old one (as SageMaker does when an update fails)."""

    def __init__(self, recording: RecordingSession, roll_back: bool = False):
        self.calls: list[dict] = []
        self.roll_back = roll_back
        self._moto = boto3.Session(region_name=recording.session.region_name).client("sagemaker")
        recording.session.events.register("before-call.sagemaker.UpdateEndpoint", self._answer)

    def _answer(self, params, **_):
        request = json.loads(params["body"])  # before-call sees the serialized request
        self.calls.append(request)
        name, config = request["EndpointName"], request["EndpointConfigName"]
        if not self.roll_back:
            self._moto.delete_endpoint(EndpointName=name)
            self._moto.create_endpoint(EndpointName=name, EndpointConfigName=config)
        arn = self._moto.describe_endpoint(EndpointName=name)["EndpointArn"]
        return SimpleNamespace(status_code=200, headers={}), {"EndpointArn": arn}
