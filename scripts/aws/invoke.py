"""Send images to the classifier and print the top-k breeds: a SageMaker endpoint or a local server.

    python -m scripts.aws.invoke dog.jpg [more.png ...] --endpoint sagemaker-classifier [--k 3]
    python -m scripts.aws.invoke dog.jpg --url http://127.0.0.1:8080      (make local-serve / serve-local)

From Python::

    from scripts.aws.invoke import predict
    top_k = predict(Path("dog.jpg").read_bytes(), endpoint="sagemaker-classifier")   # or url=...
    top_k[0]["label"], top_k[0]["probability"]

The wire format is ``classifier.protocol``'s: image bytes in (``Content-Type`` from the file name),
``{"predictions": [{"label", "class_index", "probability"}, ...]}`` out, ``k`` as the SageMaker
custom attribute ``k=<n>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from classifier import protocol

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
DEFAULT_TIMEOUT_SECONDS = 60.0


class InvokeError(Exception):
    """The server refused the request or answered something that is not a prediction."""


def content_type_for(path: str | Path) -> str:
    """``image/jpeg`` or ``image/png`` by suffix, else ``application/x-image`` (the server sniffs)."""
    return CONTENT_TYPES.get(Path(path).suffix.lower(), protocol.X_IMAGE)


def custom_attributes(k: int | None) -> str | None:
    return None if k is None else f"{protocol.TOP_K_FIELD}={k}"


def parse_response(body: bytes) -> list[dict]:
    """The top-k of one image from a JSON response: a list, most probable first."""
    try:
        predictions = json.loads(body)[protocol.PREDICTIONS_FIELD]
    except (ValueError, KeyError, TypeError) as error:
        raise InvokeError(f"not a prediction response: {body[:200]!r}") from error
    fields = (protocol.LABEL_FIELD, protocol.CLASS_INDEX_FIELD, protocol.PROBABILITY_FIELD)
    if not isinstance(predictions, list) or not all(
        isinstance(p, dict) and all(f in p for f in fields) for p in predictions
    ):
        raise InvokeError(f"not a top-k list of one image: {predictions!r:.200}")
    return predictions


def invoke_endpoint(image: bytes, endpoint: str, *, content_type: str = protocol.X_IMAGE,
                    k: int | None = None, runtime=None) -> list[dict]:
    """Top-k of one image from a SageMaker endpoint (boto3 ``sagemaker-runtime`` ``invoke_endpoint``)."""
    import boto3
    import botocore.exceptions

    runtime = runtime or boto3.client("sagemaker-runtime")
    request = {"EndpointName": endpoint, "Body": image, "ContentType": content_type,
               "Accept": protocol.JSON}
    if k is not None:
        request["CustomAttributes"] = custom_attributes(k)
    try:
        response = runtime.invoke_endpoint(**request)
    except botocore.exceptions.ClientError as error:
        details = error.response.get("OriginalMessage") or error.response["Error"].get("Message")
        status = error.response.get("OriginalStatusCode")
        raise InvokeError(f"endpoint {endpoint} refused the request"
                          + (f" ({status})" if status else "") + f": {details}") from error
    return parse_response(response["Body"].read())


def invocations_url(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/invocations`` (a full path is kept)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.path in ("", "/"):
        parsed = parsed._replace(path="/invocations")
    return urllib.parse.urlunsplit(parsed)


def invoke_url(image: bytes, url: str, *, content_type: str = protocol.X_IMAGE, k: int | None = None,
               timeout: float = DEFAULT_TIMEOUT_SECONDS) -> list[dict]:
    """Top-k of one image from a server speaking the SageMaker container protocol (local serving)."""
    headers = {"Content-Type": content_type, "Accept": protocol.JSON}
    if k is not None:
        headers[protocol.CUSTOM_ATTRIBUTES_HEADER] = custom_attributes(k)
    request = urllib.request.Request(invocations_url(url), data=image, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return parse_response(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            message = json.loads(body).get("message", body.decode(errors="replace"))
        except ValueError:
            message = body.decode(errors="replace")
        raise InvokeError(f"{request.full_url} answered {error.code}: {message}") from error
    except urllib.error.URLError as error:
        raise InvokeError(f"cannot reach {request.full_url}: {error.reason}") from error


def predict(image: bytes, *, endpoint: str | None = None, url: str | None = None,
            content_type: str = protocol.X_IMAGE, k: int | None = None, runtime=None) -> list[dict]:
    """The top-k breeds of one encoded image, from ``endpoint`` (SageMaker) or ``url`` (local)."""
    if (endpoint is None) == (url is None):
        raise ValueError("give exactly one of endpoint= or url=")
    if endpoint is not None:
        return invoke_endpoint(image, endpoint, content_type=content_type, k=k, runtime=runtime)
    return invoke_url(image, url, content_type=content_type, k=k)


def format_predictions(predictions: list[dict]) -> str:
    """``  1. Affenpinscher          93.12%  (class 0)`` lines."""
    return "\n".join(
        f"{rank:3}. {p[protocol.LABEL_FIELD]:<28} {100 * p[protocol.PROBABILITY_FIELD]:6.2f}%"
        f"  (class {p[protocol.CLASS_INDEX_FIELD]})"
        for rank, p in enumerate(predictions, start=1)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint", help="a SageMaker endpoint name")
    target.add_argument("--url", help="a local server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--k", type=int, default=None, help=f"how many breeds (server default "
                                                            f"{protocol.DEFAULT_TOP_K})")
    parser.add_argument("--region", help="the endpoint's region (default: AWS_REGION / your profile)")
    parser.add_argument("--json", action="store_true", help="print the raw top-k lists as JSON")
    args = parser.parse_args(argv)
    runtime = None
    if args.endpoint:
        from scripts.aws import settings

        try:
            context = settings.connect(args)
        except settings.USER_ERRORS as error:
            sys.exit(f"error: {error}")
        runtime = context.client("sagemaker-runtime")
    failed = False
    for path in args.images:
        try:
            top_k = predict(path.read_bytes(), endpoint=args.endpoint, url=args.url,
                            content_type=content_type_for(path), k=args.k, runtime=runtime)
        except (InvokeError, OSError) as error:
            print(f"{path}: error: {error}", file=sys.stderr)
            failed = True
            continue
        print(json.dumps({"image": str(path), protocol.PREDICTIONS_FIELD: top_k}) if args.json
              else f"{path}:\n{format_predictions(top_k)}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
