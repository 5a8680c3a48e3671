"""The Docker plumbing from the command line (``make engine-stop``, CI, debugging).

    python -m scripts.engine status          # which client and engine would be used, who uses it
    python -m scripts.engine start           # start the private engine (when none answers), pinned:
                                             # it stays up after the sessions using it have ended
    python -m scripts.engine stop [--force]  # stop the private engine by its pid (--force: even while
                                             # a session, such as a running `make test`, uses it)
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
    disconnect,
    engine_answers,
    engine_in_use,
    engine_session,
    pin,
    read_pid,
    started_by_a_session,
    stop_private_engine,
)
from scripts.engine.errors import EngineUnavailable


def main(argv: list[str]) -> None:
    private = PrivateEngine()
    status: dict[str, bool] = {}
    try:
        match argv:
            case ["status"]:
                docker = find_client(install=default_installer())
                if engine_answers(docker, None):
                    where = os.environ.get("DOCKER_HOST", "the default engine")
                elif read_pid(private.pidfile) and engine_answers(docker, private.host):
                    where = f"the private engine at {private.host} (pid {read_pid(private.pidfile)})"
                    status = {"in_use": engine_in_use(private),
                              "stops_when_unused": started_by_a_session(private)}
                else:
                    where = "none answers"
                print(json.dumps({"client": docker, "engine": where, **status}))
            case ["start"]:
                engine = connect(private)
                if engine.private is not None:
                    pin(engine.private)
                    disconnect(engine)
                print(f"DOCKER={engine.docker}")
                print(f"DOCKER_HOST={engine.host or os.environ.get('DOCKER_HOST', '')}")
            case ["stop", *options] if set(options) <= {"--force"}:
                pid = read_pid(private.pidfile)
                if pid is None:
                    print("the private engine is not running", file=sys.stderr)
                elif engine_in_use(private) and "--force" not in options:
                    sys.exit("the private engine is in use by another session (a running `make test`, "
                             "`make demo`, ...): not stopped; `python -m scripts.engine stop --force` "
                             "stops it all the same")
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
