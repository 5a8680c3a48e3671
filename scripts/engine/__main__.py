"""The Docker plumbing from the command line (``make engine-stop``, CI, debugging).

    python -m scripts.engine status   # which client and engine would be used
    python -m scripts.engine start    # start the private engine (when none answers) and leave it up
    python -m scripts.engine stop     # stop the private engine by its pid
    python -m scripts.engine base     # print a Python 3.11 base image, making one offline if needed
"""

from __future__ import annotations

import json
import os
import sys

from scripts.engine.base_image import ensure_base_image
from scripts.engine.client import default_installer, find_client
from scripts.engine.dockerd import (
    PrivateEngine,
    connect,
    engine_answers,
    engine_session,
    read_pid,
    stop_private_engine,
)
from scripts.engine.errors import EngineUnavailable


def main(argv: list[str]) -> None:
    private = PrivateEngine()
    try:
        match argv:
            case ["status"]:
                docker = find_client(install=default_installer())
                if engine_answers(docker, None):
                    where = os.environ.get("DOCKER_HOST", "the default engine")
                elif read_pid(private.pidfile) and engine_answers(docker, private.host):
                    where = f"the private engine at {private.host} (pid {read_pid(private.pidfile)})"
                else:
                    where = "none answers"
                print(json.dumps({"client": docker, "engine": where}))
            case ["start"]:
                engine = connect(private)
                print(f"DOCKER={engine.docker}")
                print(f"DOCKER_HOST={engine.host or os.environ.get('DOCKER_HOST', '')}")
            case ["stop"]:
                pid = read_pid(private.pidfile)
                if pid is None:
                    print("the private engine is not running", file=sys.stderr)
                else:
                    stop_private_engine(private, pid)
                    print(f"stopped the private engine (pid {pid})", file=sys.stderr)
            case ["base"]:
                with engine_session() as engine:
                    print(ensure_base_image(engine, os.environ.get("BASE_IMAGE") or None))
            case _:
                sys.exit(__doc__)
    except EngineUnavailable as error:
        sys.exit(f"docker engine: {error}")


if __name__ == "__main__":
    main(sys.argv[1:])
