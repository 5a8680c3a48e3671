"""The invoke client: a SageMaker endpoint (moto's sagemaker-runtime) or a local URL (a stand-in)."""

import json
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from aws_helpers import RecordingSession, seed_endpoint_result
from botocore.stub import Stubber

from classifier import protocol
from scripts.aws import invoke

TOP_3 = [
    {"label": "Affenpinscher", "class_index": 0, "probability": 0.875},
    {"label": "Afghan_hound", "class_index": 1, "probability": 0.0625},
    {"label": "Akita", "class_index": 3, "probability": 0.03125},
]
IMAGE = b"\xff\xd8\xff\xe0 not really a jpeg"
# moto's server decodes request bodies as UTF-8 (binary ones get a 500), so its tests send text.
TEXT_BODY = b"image bytes as text for moto"


class StandIn(BaseHTTPRequestHandler):
    """Answers /invocations like the serving container's gateway, and remembers the requests."""

    requests: typing.ClassVar[list[dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {name.lower(): value for name, value in self.headers.items()}
        StandIn.requests.append({"path": self.path, "headers": headers, "body": body})
        if self.headers["Content-Type"] == "text/plain":
            status, answer = 415, {"code": 415, "type": "UnsupportedMediaType", "message": "text/plain?"}
        else:
            k = int(protocol.parse_custom_attributes(
                self.headers.get(protocol.CUSTOM_ATTRIBUTES_HEADER)).get("k", 5))
            status, answer = 200, {"predictions": TOP_3[:k]}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    StandIn.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_content_types_follow_the_file_name():
    assert invoke.content_type_for("a/dog.JPG") == "image/jpeg"
    assert invoke.content_type_for("dog.png") == "image/png"
    assert invoke.content_type_for("dog.webp") == protocol.X_IMAGE


def test_responses_that_are_not_a_top_k_are_refused():
    assert invoke.parse_response(json.dumps({"predictions": TOP_3}).encode()) == TOP_3
    for body in (b"<html>", b'{"predictions": [[1, 2]]}', b'{"answer": 1}'):
        with pytest.raises(invoke.InvokeError):
            invoke.parse_response(body)


def test_local_url_gets_the_image_and_k(local_server):
    top = invoke.predict(IMAGE, url=local_server, content_type="image/jpeg", k=2)
    assert top == TOP_3[:2]
    sent = StandIn.requests[0]
    assert sent["path"] == "/invocations" and sent["body"] == IMAGE
    assert sent["headers"]["content-type"] == "image/jpeg"
    assert sent["headers"]["accept"] == "application/json"
    assert sent["headers"][protocol.CUSTOM_ATTRIBUTES_HEADER.lower()] == "k=2"


def test_local_errors_carry_the_servers_message(local_server):
    with pytest.raises(invoke.InvokeError, match="answered 415: text/plain"):
        invoke.predict(b"hello", url=local_server, content_type="text/plain")
    with pytest.raises(invoke.InvokeError, match="cannot reach"):
        invoke.predict(IMAGE, url="http://127.0.0.1:9/invocations")
    with pytest.raises(ValueError, match="exactly one"):
        invoke.predict(IMAGE)


def test_cli_prints_the_top_k_of_each_image(local_server, tmp_path, capsys):
    first, second = tmp_path / "a.jpg", tmp_path / "b.png"
    first.write_bytes(IMAGE)
    second.write_bytes(IMAGE)
    invoke.main([str(first), str(second), "--url", local_server, "--k", "3"])
    out = capsys.readouterr().out
    assert f"{first}:\n  1. Affenpinscher" in out and "87.50%  (class 0)" in out
    assert f"{second}:\n" in out and out.count("  3. Akita") == 2
    assert [r["headers"]["content-type"] for r in StandIn.requests] == ["image/jpeg", "image/png"]


def test_cli_reports_a_refused_image_and_exits_non_zero(local_server, tmp_path, capsys):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(SystemExit) as exit_info:
        invoke.main([str(missing), "--url", local_server])
    assert exit_info.value.code == 1
    assert f"{missing}: error:" in capsys.readouterr().err


def test_endpoint_invocation_sends_sagemakers_fields(aws):
    seed_endpoint_result(aws, json.dumps({"predictions": TOP_3}))
    recording = RecordingSession()
    top = invoke.predict(TEXT_BODY, endpoint="dogs", content_type="image/png", k=3,
                         runtime=recording.session.client("sagemaker-runtime"))
    assert top == TOP_3
    sent = recording.only("InvokeEndpoint")
    assert (sent["EndpointName"], sent["ContentType"], sent["Accept"], sent["CustomAttributes"]) == (
        "dogs", "image/png", "application/json", "k=3")


def test_endpoint_cli_prints_json(aws, tmp_path, capsys):
    seed_endpoint_result(aws, json.dumps({"predictions": TOP_3[:1]}))
    image = tmp_path / "dog.jpg"
    image.write_bytes(TEXT_BODY)
    invoke.main([str(image), "--endpoint", "dogs", "--json"])
    assert json.loads(capsys.readouterr().out) == {"image": str(image), "predictions": TOP_3[:1]}


def test_a_model_error_from_the_endpoint_is_reported():
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="x")
    with Stubber(runtime) as stub:  # the one answer moto cannot give: the container's 4xx
        stub.add_client_error("invoke_endpoint", service_error_code="ModelError", http_status_code=424,
                              service_message="Received client error (415)",
                              modeled_fields={"OriginalStatusCode": 415, "OriginalMessage": "unsupported"})
        with pytest.raises(invoke.InvokeError, match=r"refused the request \(415\): unsupported"):
            invoke.predict(IMAGE, endpoint="dogs", runtime=runtime)
