"""The machine's load, which the benchmarks wait on before they measure."""

from __future__ import annotations

import os
import time

POLL_S = 5.0


def wait_for_load_below(max_load: float, patience_s: float) -> None:
    """Waits (``patience_s`` at most) until the 1-minute load average is at most ``max_load``."""
    deadline = time.monotonic() + patience_s
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(POLL_S)
