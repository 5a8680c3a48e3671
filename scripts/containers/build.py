"""Build the training and serving images, offline or behind a proxy if need be.

    python -m scripts.containers.build [train] [serve] [--tag TAG ...] [--pretrained-models resnet50]
                                       [--serve-variant torch]

Tags default to the git short SHA and ``latest`` (``scripts.containers.images``); the platform is linux/amd64.
The serving image's ``torch`` variant (``--serve-variant torch``, tags suffixed ``-torch``) adds torch
to the default torch-free image (``docker/serve/Dockerfile``).
What a build takes from its environment, so that it works on a locked-down machine:

- ``BASE_IMAGE``: the Python 3.11 base; by default the public slim image, or one made offline
  with debootstrap when that cannot be pulled (``scripts.engine.dockerd``).
- ``PIP_CERT``: a CA bundle for pip (a TLS-inspecting proxy), passed as the BuildKit secret
  ``pip_cert``: it is mounted for the ``pip install`` step only and never stored in a layer.
- ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` (any case): passed on as Docker's predefined build args.
- ``PIP_INDEX_URL`` (http/https only): a package index mirror instead of PyPI.
- ``WHEELHOUSE``: folders holding wheels for an offline build (default: the host pip's
  ``find-links`` folders). Wheels found there that an image pins are linked into its
  ``docker/<image>/wheelhouse/``.
- ``TORCH_CPU_INDEX``: where the serving image's torch variant gets its CPU torch (PyTorch's CPU
  index); not used when the wheelhouse already holds the pinned wheel.

Standard library only: ``make build`` needs no Python environment.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from scripts import REPO_ROOT
from scripts.containers import images
from scripts.engine import dockerd
from scripts.engine.base_image import ensure_base_image
from scripts.engine.errors import EngineUnavailable

PLATFORM = "linux/amd64"
DEFAULT_TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "FTP_PROXY")
PIP_CERT_SECRET = "pip_cert"
TORCH_VARIANT = "torch"  # the serving image with torch (SERVE_ENGINE=torch, older artifacts)
SERVE_VARIANTS = ("default", TORCH_VARIANT)


def dockerfile(kind: str) -> Path:
    images.repository(kind)  # validates the kind
    return REPO_ROOT / "docker" / kind / "Dockerfile"


def requirements_file(kind: str, variant: str = "default") -> Path:
    """The hash-locked requirements of an image (the serving image's torch variant has its own)."""
    if kind == "serve" and variant == TORCH_VARIANT:
        return REPO_ROOT / "docker" / kind / "requirements-torch.txt"
    return REPO_ROOT / "docker" / kind / "requirements.txt"


def variant_tags(tags: Iterable[str], variant: str = "default") -> list[str]:
    """``["abc123", "latest"]`` -> ``["abc123-torch", "latest-torch"]`` for the torch variant."""
    return [tag if variant == "default" else f"{tag}-{variant}" for tag in tags]


def wheelhouse_dir(kind: str) -> Path:
    """Wheels offered to the image's ``pip install``; each image has its own, so that a wheel for
    one image never changes the other's build cache."""
    return REPO_ROOT / "docker" / kind / "wheelhouse"


# ---------------------------------------------------------------- pins and wheels (pure)


@dataclass(frozen=True)
class Pin:
    name: str  # normalised (PEP 503)
    version: str
    hashes: frozenset[str]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(requirements_text: str) -> dict[str, Pin]:
    """``name==version \\ --hash=sha256:...`` entries of a hash-locked requirements file, by name."""
    pins: dict[str, Pin] = {}
    joined = re.sub(r"\\\n", " ", requirements_text)
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)", line)
        if match:
            name = normalise(match.group(1))
            pins[name] = Pin(
                name, match.group(2), frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
            )
    return pins


def wheel_name_version(filename: str) -> tuple[str, str] | None:
    """``torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl`` -> ``("torch", "2.13.0+cpu")``."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[: -len(".whl")].split("-")
    if len(parts) < 5:
        return None
    return normalise(parts[0]), parts[1]


def pinned_candidates(pins: Mapping[str, Pin], wheels: Iterable[Path]) -> list[Path]:
    """The wheels whose name and version a pin names (their hashes are checked by the caller)."""
    found = []
    for wheel in wheels:
        name_version = wheel_name_version(wheel.name)
        if name_version and name_version[0] in pins and pins[name_version[0]].version == name_version[1]:
            found.append(wheel)
    return found


def torch_index_for(pins: Mapping[str, Pin], wheelhouse_hashes: set[str], configured: str) -> str:
    """The extra index for torch, or "" when the wheelhouse already holds the pinned torch wheel."""
    torch = pins.get("torch")
    if torch is None or torch.hashes & wheelhouse_hashes:
        return ""
    return configured


def host_find_links(pip_config_listing: str, environ: Mapping[str, str]) -> list[Path]:
    """Local folders in the host pip's ``find-links`` (``PIP_FIND_LINKS`` and ``pip config list``)."""
    values = [environ.get("PIP_FIND_LINKS", "")]
    values += re.findall(r"find-links='([^']*)'", pip_config_listing)
    folders = []
    for value in values:
        for item in value.split():
            item = item.removeprefix("file://")
            if "://" not in item and item not in folders:
                folders.append(item)
    return [Path(item) for item in folders]


def build_args(
    base_image: str,
    environ: Mapping[str, str],
    torch_index: str | None = None,
    pretrained_models: str = "",
    serve_variant: str = "",
) -> list[str]:
    """The ``--build-arg`` options: base, proxies (values from the environment), index, torch, weights,
    the serving image's variant."""
    options = ["--build-arg", f"BASE_IMAGE={base_image}"]
    for name in PROXY_VARIABLES:
        for spelling in (name, name.lower()):
            if environ.get(spelling):
                options += ["--build-arg", spelling]  # the value is read from the environment
    index_url = environ.get("PIP_INDEX_URL", "")
    if index_url.startswith(("http://", "https://")):
        options += ["--build-arg", f"PIP_INDEX_URL={index_url}"]
    if torch_index is not None:
        options += ["--build-arg", f"TORCH_INDEX={torch_index}"]
    if pretrained_models:
        options += ["--build-arg", f"PRETRAINED_MODELS={pretrained_models}"]
    if serve_variant:
        options += ["--build-arg", f"SERVE_VARIANT={serve_variant}"]
    return options


def build_command(
    kind: str,
    tags: Iterable[str],
    args: list[str],
    pip_cert: str | None = None,
    platform: str = PLATFORM,
) -> list[str]:
    """``docker build`` arguments for one image (context: the repository root)."""
    command = [
        "build",
        "--platform",
        platform,
        "--network",
        "host",
        "--progress",
        "plain",
        "-f",
        str(dockerfile(kind)),
    ]
    for tag in tags:
        command += ["-t", f"{images.repository(kind)}:{tag}"]
    command += args
    if pip_cert:
        command += ["--secret", f"id={PIP_CERT_SECRET},src={pip_cert}"]
    return [*command, str(REPO_ROOT)]


# ---------------------------------------------------------------- edges


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_config_listing() -> str:
    try:
        return subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def wheelhouse_sources(environ: Mapping[str, str]) -> list[Path]:
    if environ.get("WHEELHOUSE"):
        return [Path(item) for item in environ["WHEELHOUSE"].split(os.pathsep) if item]
    return host_find_links(_pip_config_listing(), environ)


def host_torch_index(kind: str, configured: str, environ: Mapping[str, str]) -> str:
    """The extra index ``pip install`` of ``kind``'s pins needs on this host for torch (for the
    serving image: its torch variant's pins, those of the host's ``.venv/serve``).

    "" when a find-links folder already holds the pinned torch wheel: an unreachable index
    would otherwise cost pip five retries for every package.
    """
    pins = parse_pins(requirements_file(kind, TORCH_VARIANT).read_text())
    torch = pins.get("torch")
    local = (wheel for folder in wheelhouse_sources(environ) for wheel in folder.glob("torch-*.whl"))
    wheels = pinned_candidates(pins, local)
    local_hashes = {sha256_of(wheel) for wheel in wheels} if torch else set()
    return torch_index_for(pins, local_hashes, configured)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link when both lie on one file system (no copy of a 200 MB wheel), else a copy."""
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except OSError:
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)


def fill_wheelhouse(pins: Mapping[str, Pin], sources: Iterable[Path], target: Path) -> set[str]:
    """Links (or copies) the pinned wheels found in ``sources`` into ``target``.

    Returns the sha256 of every pinned wheel now in ``target``.
    """
    allowed = set().union(*(pin.hashes for pin in pins.values()))
    present = {sha256_of(wheel): wheel for wheel in pinned_candidates(pins, target.glob("*.whl"))}
    for source in sources:
        if not source.is_dir() or source.resolve() == target.resolve():
            continue
        for wheel in pinned_candidates(pins, source.glob("*.whl")):
            if (target / wheel.name).exists():
                continue
            digest = sha256_of(wheel)
            if digest not in allowed or digest in present:
                continue
            link_or_copy(wheel, target / wheel.name)
            present[digest] = target / wheel.name
            print(f"[build] wheelhouse: {wheel.name} from {source}", file=sys.stderr, flush=True)
    return set(present) & allowed


def build_image(
    engine: dockerd.Engine,
    kind: str,
    tags: Iterable[str],
    base_image: str,
    environ: Mapping[str, str] = os.environ,
    pretrained_models: str = "",
    quiet: bool = False,
    serve_variant: str = "default",
) -> float:
    """Builds one image and returns the seconds it took; raises CalledProcessError on failure.

    ``serve_variant="torch"``: the serving image's torch variant, under ``variant_tags(tags)``."""
    if serve_variant not in SERVE_VARIANTS:
        raise ValueError(f"unknown serving image variant {serve_variant!r}; expected one of {SERVE_VARIANTS}")
    variant = serve_variant if kind == "serve" else "default"
    tags = variant_tags(tags, variant)
    pins = parse_pins(requirements_file(kind, variant).read_text())
    wheelhouse_hashes = fill_wheelhouse(pins, wheelhouse_sources(environ), wheelhouse_dir(kind))
    torch_index = None
    if kind == "serve":
        torch_index = torch_index_for(
            pins, wheelhouse_hashes, environ.get("TORCH_CPU_INDEX") or DEFAULT_TORCH_CPU_INDEX
        )
    pip_cert = environ.get("PIP_CERT")
    command = build_command(
        kind,
        tags,
        build_args(base_image, environ, torch_index, pretrained_models, variant if kind == "serve" else ""),
        pip_cert=pip_cert if pip_cert and Path(pip_cert).is_file() else None,
    )
    print(f"[build] {images.repository(kind)}:{','.join(tags)} on {base_image}", file=sys.stderr, flush=True)
    started = time.monotonic()
    if quiet:
        result = engine.run(*command, check=False)
        if result.returncode:
            raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
    else:
        engine.run(*command, capture=False)
    seconds = time.monotonic() - started
    print(f"[build] {images.repository(kind)} built in {seconds:.0f}s", file=sys.stderr, flush=True)
    return seconds


def image_size_mb(engine: dockerd.Engine, image: str) -> float:
    return int(engine.run("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kinds", nargs="*", metavar="train|serve", help="the images (default: both)")
    parser.add_argument("--tag", action="append", help="tags (default: the git short SHA and latest)")
    parser.add_argument(
        "--pretrained-models",
        default=os.environ.get("PRETRAINED_MODELS", ""),
        help='training image: bake these models\' ImageNet weights, e.g. "resnet50"',
    )
    parser.add_argument("--serve-variant", choices=SERVE_VARIANTS, default="default",
                        help="serving image: the torch-free default, or its torch variant (tags -torch)")
    parser.add_argument("--print-torch-index", metavar="INDEX_URL",
                        help="print the torch index pip needs for the images' pins on this host "
                             "(INDEX_URL, or nothing when a local wheel has the pinned torch), then exit")
    args = parser.parse_args()
    if args.print_torch_index is not None:
        for kind in args.kinds or ["serve"]:
            print(host_torch_index(kind, args.print_torch_index, os.environ))
        return
    unknown = set(args.kinds) - set(images.REPOSITORIES)
    if unknown:
        parser.error(f"unknown image(s) {sorted(unknown)}; choose from {sorted(images.REPOSITORIES)}")
    tags = args.tag or list(dict.fromkeys([images.git_tag(), images.LATEST]))
    try:
        with dockerd.engine_session() as engine:
            base_image = ensure_base_image(engine, os.environ.get("BASE_IMAGE") or None)
            for kind in args.kinds or list(images.REPOSITORIES):
                pretrained = args.pretrained_models if kind == "train" else ""
                build_image(engine, kind, tags, base_image, pretrained_models=pretrained,
                            serve_variant=args.serve_variant)
                variant = args.serve_variant if kind == "serve" else "default"
                image = f"{images.repository(kind)}:{variant_tags(tags, variant)[0]}"
                print(f"[build] {image}: {image_size_mb(engine, image):.0f} MB", file=sys.stderr)
    except EngineUnavailable as error:
        sys.exit(f"docker engine: {error}")
    except subprocess.CalledProcessError as error:
        sys.exit(f"build failed: {' '.join(error.cmd[:2])} ... exited {error.returncode}")


if __name__ == "__main__":
    main()
