"""The two images, built in a real Docker engine: what SageMaker and the builds expect of them.

Marker ``docker``: without any Docker engine these tests are skipped with a warning, and under
CI (``CI=true``) they fail instead. Both images are built once per session (``docker_fixtures``).
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts.aws import ecr
from scripts.containers import build, images, push
from scripts.engine import apt, dockerd
from scripts.local import train as local_train

pytestmark = pytest.mark.docker


def test_serving_image_runs_as_non_root_with_the_sagemaker_labels(engine, built_images):
    config = json.loads(
        engine.run("image", "inspect", "--format", "{{json .Config}}", built_images["serve"]).stdout
    )
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.multi-models"] == "false"
    assert config["User"] not in ("", "root", "0")
    uid = engine.run("run", "--rm", built_images["serve"], "id", "-u").stdout.strip()
    assert uid != "0"
    # `docker run IMAGE serve` resolves `serve` on PATH; java for MMS, and no torchvision.
    check = "command -v serve && command -v java && ! python3 -c 'import torchvision' 2>/dev/null"
    engine.run("run", "--rm", built_images["serve"], "sh", "-c", check)


def test_serving_image_serves_with_openvino_on_the_cpu_and_holds_no_torch(engine, built_images):
    check = ("import importlib.util, openvino; "
             "print(importlib.util.find_spec('torch'), openvino.Core().available_devices)")
    printed = engine.run("run", "--rm", built_images["serve"], "python3", "-c", check).stdout
    assert printed.split() == ["None", "['CPU']"], printed  # GPU and NPU plugins left out


def test_training_image_runs_the_toolkit_on_our_program(engine, built_images):
    config = json.loads(
        engine.run("image", "inspect", "--format", "{{json .Config}}", built_images["train"]).stdout
    )
    assert "SAGEMAKER_PROGRAM=train.py" in config["Env"]
    # The toolkit hands over to our framework module, as make train-local has it do on the host.
    assert f"SAGEMAKER_TRAINING_MODULE={local_train.TRAINING_MODULE}" in config["Env"]
    assert "PYTHONPATH=/opt/ml/code" in config["Env"]
    assert config["Cmd"] == ["train"]
    listing = engine.run(
        "run", "--rm", built_images["train"], "sh", "-c", "command -v train; ls /opt/ml/code"
    )
    assert "/train" in listing.stdout.splitlines()[0]
    assert "train.py" in listing.stdout.split()


def test_images_are_linux_amd64_and_hold_no_pip_ca_secret(engine, built_images):
    for image in built_images.values():
        platform = engine.run(
            "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", image
        ).stdout.strip()
        assert platform == "linux/amd64"
        history = engine.run("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
        assert "BEGIN CERTIFICATE" not in history
        engine.run("run", "--rm", image, "sh", "-c", "test ! -e /run/secrets/pip_cert")
        env = engine.run("image", "inspect", "--format", "{{json .Config.Env}}", image).stdout
        assert "PIP_CERT" not in env


class _TokenIndex:
    """A package index on a loopback port: it answers only requests whose basic-auth password is
    ``token`` and passes them on to PyPI's simple API (the files themselves come from PyPI's CDN)."""

    def __init__(self, token: str):
        self.authorized = 0
        self.refused = 0
        index = self
        expected = "Basic " + base64.b64encode(f"pip:{token}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.headers.get("Authorization") != expected:
                    index.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="index"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                index.authorized += 1
                upstream = urllib.request.Request(
                    "https://pypi.org" + self.path, headers={"Accept": self.headers.get("Accept", "*/*")}
                )
                try:
                    with urllib.request.urlopen(upstream, timeout=60) as response:
                        status, body = response.status, response.read()
                        content_type = response.headers.get("Content-Type", "text/html")
                except urllib.error.HTTPError as error:
                    status, body, content_type = error.code, b"", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://pip:{token}@127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def image_contains(engine: dockerd.Engine, image: str, needle: bytes) -> bool:
    """Whether ``needle`` occurs anywhere in the image: every layer's files and its config (docker save)."""
    save = subprocess.Popen(engine.command("save", image), env=engine.env, stdout=subprocess.PIPE)
    tail, found = b"", False
    while block := save.stdout.read(1 << 20):
        if needle in tail + block:
            found = True
        tail = block[-len(needle):]
    save.stdout.close()
    assert save.wait() == 0, f"docker save {image} failed"
    return found


def test_a_package_index_token_reaches_pip_but_no_layer_and_no_history(engine, base_image, built_images):
    """PIP_INDEX_URL often carries a token: a BuildKit secret, never a build argument stored in the image."""
    token = f"marker-{uuid.uuid4().hex}"
    index = _TokenIndex(token)
    tag = built_images["serve"].split(":", 1)[1] + "-index-token"
    image = f"{images.repository('serve')}:{tag}"
    try:
        # No cache: pip must really run with the secret (a cached layer would prove nothing).
        environ = {**os.environ, "PIP_INDEX_URL": index.url}
        build.build_image(engine, "serve", [tag], base_image, environ=environ, quiet=True, no_cache=True)
        assert index.authorized > 0  # pip used the index, with the token
        history = engine.run("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
        assert token not in history and "PIP_INDEX_URL=http" not in history  # no build argument
        assert token not in engine.run("image", "inspect", image).stdout
        assert not image_contains(engine, image, token.encode())
        assert image_contains(engine, image, b"sagemaker_inference")  # the scan does see the files
    finally:
        index.stop()
        engine.run("rmi", image, check=False)


RESNET18_WEIGHTS_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            return True
    except OSError:
        return False


def test_pretrained_models_build_fails_naming_the_url_when_the_weights_cannot_be_fetched(
    engine, base_image, built_images
):
    """Offline (here: every download through a proxy that refuses connections) the build stops."""
    dead_proxy = f"http://127.0.0.1:{free_loopback_port()}"
    environ = {**os.environ, "HTTPS_PROXY": dead_proxy, "https_proxy": dead_proxy}
    tag = built_images["train"].split(":", 1)[1] + "-offline-weights"
    # resnet34: a model no other build bakes, so no cached layer can stand in for the download.
    with pytest.raises(subprocess.CalledProcessError) as failed:
        build.build_image(engine, "train", [tag], base_image, environ, pretrained_models="resnet34",
                          quiet=True)
    output = (failed.value.stdout or "") + (failed.value.stderr or "")
    assert "cannot bake resnet34 weights from https://download.pytorch.org/models/resnet34-" in output
    assert not engine.image_exists(f"{images.repository('train')}:{tag}")


def test_pretrained_models_build_option_bakes_weights_into_the_torch_hub_cache(
    engine, base_image, built_images
):
    if not reachable(RESNET18_WEIGHTS_URL):
        pytest.skip(f"{RESNET18_WEIGHTS_URL} is not reachable from this machine: baking not tested")
    tag = built_images["train"].split(":", 1)[1] + "-weights"
    image = f"{images.repository('train')}:{tag}"
    build.build_image(engine, "train", [tag], base_image, pretrained_models="resnet18", quiet=True)
    try:
        listing = engine.run("run", "--rm", image, "sh", "-c", "ls $TORCH_HOME/hub/checkpoints").stdout
        assert "resnet18-f37072fd.pth" in listing.split()
    finally:
        engine.run("rmi", image, check=False)


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _AuthorizingRegistry:
    """Debian's docker-registry on a free loopback port, with htpasswd for ECR's user and password."""

    def __init__(self, tmp_path, user: str, password: str):
        import bcrypt  # in the dev environment (paramiko's dependency)

        if shutil.which("docker-registry") is None and os.geteuid() == 0 and shutil.which("apt-get"):
            apt.install_debian_packages("docker-registry")
        registry = shutil.which("docker-registry")
        if registry is None:
            pytest.skip("docker-registry (Debian package) is not installed and cannot be here")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        (tmp_path / "htpasswd").write_text(
            f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n"
        )
        (tmp_path / "config.yml").write_text(
            "version: 0.1\n"
            f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
            f"http: {{addr: '127.0.0.1:{self.port}'}}\n"
            f"auth: {{htpasswd: {{realm: test, path: {tmp_path / 'htpasswd'}}}}}\n"
        )
        self.process = subprocess.Popen(
            [registry, "serve", str(tmp_path / "config.yml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self.authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        deadline = time.monotonic() + 30
        while self.tags("v2-probe") is None and time.monotonic() < deadline:
            time.sleep(0.2)

    def tags(self, repository: str) -> list[str] | None:
        """The tags the registry holds for ``repository`` (None while it does not answer yet)."""
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repository}/tags/list", headers={"Authorization": self.authorization}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())["tags"]
        except urllib.error.HTTPError as error:
            return [] if error.code == 404 else None
        except OSError:
            return None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def test_push_creates_missing_repositories_logs_in_and_pushes_every_tag(
    engine, base_image, tmp_path, monkeypatch
):
    """`make push` end to end, with moto for ECR's API and a local registry for ECR's registry."""
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))  # docker login writes here
    pushing = dockerd.Engine(engine.docker, engine.host)
    # A small stand-in for the serving image: pushing 1.4 GB would prove nothing more.
    for tag in ("push-a", "push-b"):
        pushing.run("tag", base_image, f"{images.repository('serve')}:{tag}")
    with mock_aws():
        import boto3

        client = boto3.client("ecr", region_name="eu-west-1")
        _, password = ecr.login_credentials(client)
        registry = _AuthorizingRegistry(tmp_path, "AWS", password)
        try:
            pushed = push.push(client, pushing, registry.host, ["serve"], ["push-a", "push-b"])
            repositories = [repo["repositoryName"] for repo in client.describe_repositories()["repositories"]]
            tags_in_registry = registry.tags(images.repository("serve"))
        finally:
            registry.stop()
    assert repositories == [images.repository("serve")]
    assert pushed == [f"{registry.host}/{images.repository('serve')}:{tag}" for tag in ("push-a", "push-b")]
    assert sorted(tags_in_registry) == ["push-a", "push-b"]
    for tag in ("push-a", "push-b"):
        pushing.run(
            "rmi",
            f"{images.repository('serve')}:{tag}",
            f"{registry.host}/{images.repository('serve')}:{tag}",
        )
