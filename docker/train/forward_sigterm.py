#!/usr/bin/env python3
"""PID 1 of the training container: runs its command (SageMaker's ``train``) and passes SIGTERM (and
SIGINT) on to the training script.

SageMaker stops a job (StopTrainingJob, a spot interruption) with SIGTERM to the container's PID 1,
then SIGKILL. The toolkit's ``train`` has no SIGTERM handler, and PID 1 ignores signals it does not
handle, so the script would never hear it and could not checkpoint. Here the toolkit runs in a
process group of its own with SIGTERM and SIGINT ignored (which its children inherit), and a stop
signal goes to that whole group: the training script installs its own handler, checkpoints and
exits; the toolkit and the data-loader workers ignore it (the workers are stopped by their parent);
the toolkit then writes output/success or output/failure as usual. Before the script has started
there is nothing to save, and the group is killed.

PID 1 must never die of its own signal handling: a signal may arrive while the script or the toolkit
is exiting, so a process that is already gone is not an error, and the toolkit's exit status is only
ever collected by the main loop.
"""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # Ctrl-C on an attached `docker run` arrives as SIGINT


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (field 4 of /proc/PID/stat, after the command's parentheses)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
    return found


def _ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class Forwarder:
    """Starts the command in its own process group and passes stop signals on to that group."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.exit_status: int | None = None  # set once the main loop has collected the child
        self.pending: int | None = None  # a signal that came before the child existed

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.handle)

    def start(self, command: list[str]) -> subprocess.Popen:
        self.child = subprocess.Popen(command, preexec_fn=_ignore_stop_signals, process_group=0)
        if self.pending is not None:
            self.handle(self.pending, None)
        return self.child

    def handle(self, signum: int, frame: object) -> None:
        """The signal handler: never raises, whatever state the child is in."""
        try:
            self.forward(signum)
        except Exception as error:  # PID 1 must survive its own handler
            print(f"[forward-sigterm] could not pass signal {signum} on: {error}", file=sys.stderr,
                  flush=True)

    def forward(self, signum: int) -> None:
        if self.child is None:
            self.pending = signum
            return
        if self.exit_status is not None:
            return  # the child is gone and collected: nothing to stop
        group = self.child.pid  # the group leader's pid is the group's id
        # The toolkit's own children are the training script (or a shell starting it).
        signo = signum if children_of(group) else signal.SIGKILL
        with contextlib.suppress(ProcessLookupError):  # the whole group has exited meanwhile
            os.killpg(group, signo)

    def wait(self) -> int:
        """Reaps every child (as PID 1 must: orphans land here) until the command exits; its status."""
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:  # no child left: only if something else collected ours
                print("[forward-sigterm] the command's exit status was lost", file=sys.stderr, flush=True)
                self.exit_status = 1
                return self.exit_status
            if pid == self.child.pid:
                code = os.waitstatus_to_exitcode(status)
                self.child.returncode = code
                self.exit_status = code if code >= 0 else 128 - code
                return self.exit_status


def main(command: list[str]) -> int:
    forwarder = Forwarder()
    forwarder.install()
    forwarder.start(command)
    return forwarder.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["train"]))
