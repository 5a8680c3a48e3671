"""Data-parallel training settings: what a job asks for, what the toolkit launches, the batch rule.

SageMaker's CreateTrainingJob has no field for distributed training. A job asks for it with
hyperparameters whose names start with ``sagemaker_``: the training toolkit reads them and never
passes them to the training script. ``TORCH_DISTRIBUTED`` is the one the SageMaker Python SDK sets
for ``distribution={"torch_distributed": {"enabled": True}}``: torchrun on every host, one process
per GPU (``PROCESSES_PER_HOST`` overrides the count, e.g. several processes on a CPU host).
``launch_plan`` is the decision ``train_launcher.py`` takes in the container from these settings.

The batch rule: ``batch-size`` is the GLOBAL batch, the images one optimizer step learns from on all
processes together; each of N processes loads ``batch-size / N`` of them. The gradients DDP
averages are then those of one batch of ``batch-size`` images, so a learning rate or batch size
tuned on one GPU means the same on N GPUs or hosts.

Standard library only: the launchers import this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Hyperparameters the training toolkit reads (the SDK's names; never passed to train.py).
TORCH_DISTRIBUTED = "sagemaker_torch_distributed_enabled"
# sagemaker-training reads this count for every runner, torchrun's included (its name is MPI's).
PROCESSES_PER_HOST = "sagemaker_mpi_num_of_processes_per_host"

# How SageMaker copies an S3 channel to several instances: every object to each instance, or
# each object to one instance (each host then trains and evaluates on its share).
S3_FULLY_REPLICATED = "FullyReplicated"
S3_SHARDED = "ShardedByS3Key"
S3_DATA_DISTRIBUTIONS = (S3_FULLY_REPLICATED, S3_SHARDED)


def distribution_hyperparameters(enabled: bool, processes_per_host: int | None = None) -> dict[str, str]:
    """The ``sagemaker_*`` hyperparameters of a job (as SageMaker's strings)."""
    values = {TORCH_DISTRIBUTED: "true" if enabled else "false"}
    if processes_per_host is not None:
        if processes_per_host < 1:
            raise ValueError(f"processes per host must be at least 1, got {processes_per_host}")
        values[PROCESSES_PER_HOST] = str(processes_per_host)
    return values


def read_flag(value: object) -> bool | None:
    """A boolean setting as the toolkit hands it over (JSON-decoded or a string); None when absent."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


@dataclass(frozen=True)
class LaunchPlan:
    """How the container starts the trainer: under torchrun (``processes_per_host`` each) or alone."""

    torchrun: bool
    processes_per_host: int
    reason: str


def launch_plan(framework_params: Mapping[str, object], hosts: int, gpus: int) -> LaunchPlan:
    """torchrun when the job asks for it, or, when it says nothing, when there is more than one
    host or GPU to use; one plain process otherwise (as a one-GPU job always ran).

    Raises ValueError for a job that spans several hosts yet turns distribution off: each host
    would train a model of its own.
    """
    try:
        enabled = read_flag(framework_params.get(TORCH_DISTRIBUTED))
    except ValueError as error:
        raise ValueError(f"hyperparameter {TORCH_DISTRIBUTED}: {error}") from error
    given = framework_params.get(PROCESSES_PER_HOST)
    per_host = int(given) if given not in (None, "") else max(gpus, 1)
    if per_host < 1:
        raise ValueError(f"hyperparameter {PROCESSES_PER_HOST} must be at least 1, got {given!r}")
    if enabled is False:
        if hosts > 1:
            raise ValueError(
                f"the job has {hosts} instances but {TORCH_DISTRIBUTED}=false: each instance would train "
                "a separate model; use one instance, or enable distribution"
            )
        return LaunchPlan(False, 1, f"{TORCH_DISTRIBUTED}=false: one process")
    if enabled is None and hosts == 1 and per_host == 1:
        return LaunchPlan(False, 1, "one host with at most one GPU: one process")
    why = "the job asks for it" if enabled else f"{hosts} host(s) x {per_host} process(es)"
    return LaunchPlan(True, per_host, f"torchrun, {per_host} process(es) on each of {hosts} host(s) ({why})")


def per_rank_batch_size(global_batch: int, world_size: int) -> int:
    """Each process's share of the global batch; raises ValueError when it does not divide evenly."""
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    if global_batch % world_size:
        lower = global_batch - global_batch % world_size
        choices = " or ".join(str(n) for n in (lower, lower + world_size) if n > 0)
        raise ValueError(
            f"batch-size {global_batch} is the global batch and must divide evenly among the "
            f"{world_size} training processes (hosts x processes per host); use {choices}"
        )
    return global_batch // world_size
