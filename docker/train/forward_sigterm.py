#!/usr/bin/env python3
"""PID 1 of the training container: runs its command (SageMaker's ``train``) and passes SIGTERM (and
SIGINT) on to the training script.

SageMaker stops a job (StopTrainingJob, a spot interruption) with SIGTERM to the container's PID 1,
then SIGKILL. The toolkit's ``train`` has no SIGTERM handler, and PID 1 ignores signals it does not
handle, so the script would never hear it and could not checkpoint. Here the toolkit runs with
SIGTERM ignored and the signal goes to its children (the training script), which checkpoints and
exits; the toolkit then writes output/success or output/failure as usual. Only the toolkit's direct
children are signalled: a DataLoader worker dies on a SIGTERM that does not come from its parent.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (field 4 of /proc/PID/stat, after the command's parentheses)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def main(command: list[str]) -> int:
    def ignore_stop_signals() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    toolkit = subprocess.Popen(command, preexec_fn=ignore_stop_signals)

    def forward(signo, frame):
        scripts = children_of(toolkit.pid)
        for pid in scripts:
            os.kill(pid, signo)
        if not scripts:  # stopped before the script started: nothing to save
            toolkit.kill()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)  # Ctrl-C on an attached `docker run` arrives as SIGINT
    # As PID 1 we also reap the orphans that end up here, until the toolkit itself exits.
    while True:
        pid, status = os.wait()
        if pid == toolkit.pid:
            toolkit.returncode = os.waitstatus_to_exitcode(status)
            return toolkit.returncode if toolkit.returncode >= 0 else 128 - toolkit.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["train"]))
