"""The training toolkit's framework module: torchrun on every host for data-parallel jobs.

The training image sets ``SAGEMAKER_TRAINING_MODULE=train_launcher:main``; the toolkit's ``train``
command (sagemaker-training 4.9.0) then imports this module and calls :func:`main` where it would
run ``train.py`` itself. Everything else stays the toolkit's: waiting until every host's name
resolves, the hyperparameters as arguments and ``SM_*`` variables, ``output/success`` or
``output/failure``.

Why a framework module: 4.9.0's ``train`` only ever chooses its MPI runner or a single process.
Its ``TorchDistributedRunner`` (``torchrun --nnodes <hosts> --nproc_per_node <n> --node_rank <i>
--master_addr <first host> --master_port 7777 train.py ...``) is chosen by a framework module
only, as AWS's PyTorch images do with sagemaker-pytorch-training, whose releases for this toolkit
line need sagemaker-training 5 (its protobuf cannot live with smdebug's). The runner accepts any
instance type, CPU and GPU alike (it only adds EFA settings on some), so this module chooses it,
by ``classifier.distribution.launch_plan``.

It calls the runner itself rather than through ``entry_point.run``: that function passes
``(wait, capture_error)`` by position to ``TorchDistributedRunner.run(capture_error, wait)``, which
then never checks torchrun's exit status (a failed training would be reported as a success) and
runs torchrun through a shell. The steps ``entry_point.run`` takes before it (the environment
variables, waiting for the hosts' names) are taken here.

Imports only the standard library and the toolkit: it runs in the toolkit's process, before torch.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from sagemaker_training import entry_point, environment, errors, files, runner

from classifier.distribution import PROCESSES_PER_HOST, launch_plan

logger = logging.getLogger(__name__)

# SageMaker sends SIGKILL 120 s after SIGTERM; torchrun passes SIGTERM on to the trainers and
# kills them after this many seconds: long enough for the agreed stop and one checkpoint.
SHUTDOWN_GRACE_S = "100"
# As long as the toolkit waits for the hosts' names before it starts a script.
HOST_RESOLUTION_TIMEOUT_S = 15 * 60


def wait_for_hosts(hosts: list[str], timeout_s: float = HOST_RESOLUTION_TIMEOUT_S) -> None:
    """Waits until every host's name resolves (SageMaker's cluster DNS comes up with the hosts)."""
    deadline = time.monotonic() + timeout_s
    for host in hosts:
        while True:
            try:
                socket.gethostbyname(host)
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    message = f"host {host} did not resolve within {timeout_s:.0f} s: {error}"
                    raise errors.ClientError(message) from error
                time.sleep(1)


def main() -> None:
    env = environment.Environment()
    try:
        plan = launch_plan(env.additional_framework_parameters, len(env.hosts), env.num_gpus)
    except ValueError as error:
        raise errors.ClientError(str(error)) from error
    logger.info("launching %s: %s", env.user_entry_point, plan.reason)
    if not plan.torchrun:  # what `train` does without a framework module
        entry_point.run(env.module_dir, env.user_entry_point, env.to_cmd_args(), env.to_env_vars())
        return
    # gloo (CPU) talks over the interface SageMaker names, as the runner sets it for NCCL.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", env.network_interface_name)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_GRACE_S)
    env_vars = env.to_env_vars()
    environment.write_env_vars(env_vars)
    wait_for_hosts(env.hosts)
    torchrun = runner.get(
        runner.TorchDistributedRunnerType, env.user_entry_point, env.to_cmd_args(), env_vars,
        {PROCESSES_PER_HOST: plan.processes_per_host},
    )
    try:
        torchrun.run(capture_error=False, wait=True)
    except errors.ExecuteUserScriptError as error:
        # Kept if a trainer wrote its reason (rank and host); else this host's processes died without
        # one (SIGKILL, or NCCL's watchdog aborting them), and torchrun's "Root Cause" names the rank.
        files.write_failure_file(
            f"training process(es) on {env.current_host} ended without a reason of their own (torchrun "
            f"exit {error.return_code}): killed (out of memory?), or stopped by NCCL's watchdog after "
            "distributed-timeout; torchrun's \"Root Cause\" in this host's log names the rank"
        )
        raise
