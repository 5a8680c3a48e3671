"""The data-parallel settings: what a job asks for, how the container launches, the global batch."""

from __future__ import annotations

import pytest

from classifier.distribution import (
    PROCESSES_PER_HOST,
    TORCH_DISTRIBUTED,
    distribution_hyperparameters,
    launch_plan,
    per_rank_batch_size,
    read_flag,
)


@pytest.mark.parametrize(("params", "hosts", "gpus", "torchrun", "per_host"), [
    ({}, 1, 0, False, 1),  # a CPU job, as it always ran
    ({}, 1, 1, False, 1),  # one GPU: one process
    ({}, 1, 4, True, 4),  # ml.g5.12xlarge: one process per GPU, even unasked
    ({}, 2, 0, True, 1),  # two instances are one job, never two separate trainings
    ({TORCH_DISTRIBUTED: True}, 1, 1, True, 1),
    ({TORCH_DISTRIBUTED: "true"}, 2, 4, True, 4),
    ({TORCH_DISTRIBUTED: True, PROCESSES_PER_HOST: 2}, 1, 0, True, 2),  # make train-local NPROC=2
    ({TORCH_DISTRIBUTED: "false"}, 1, 4, False, 1),
])
def test_launch_plan(params, hosts, gpus, torchrun, per_host):
    plan = launch_plan(params, hosts, gpus)
    assert (plan.torchrun, plan.processes_per_host) == (torchrun, per_host)
    assert plan.reason


def test_several_hosts_with_distribution_turned_off_is_refused():
    with pytest.raises(ValueError, match=r"2 instances but sagemaker_torch_distributed_enabled=false"):
        launch_plan({TORCH_DISTRIBUTED: False}, 2, 0)


def test_unreadable_settings_are_refused_by_name():
    with pytest.raises(ValueError, match=TORCH_DISTRIBUTED):
        launch_plan({TORCH_DISTRIBUTED: "maybe"}, 1, 0)
    with pytest.raises(ValueError, match=PROCESSES_PER_HOST):
        launch_plan({TORCH_DISTRIBUTED: True, PROCESSES_PER_HOST: 0}, 1, 0)


def test_job_hyperparameters_are_sagemaker_strings():
    assert distribution_hyperparameters(True) == {TORCH_DISTRIBUTED: "true"}
    assert distribution_hyperparameters(True, 2) == {TORCH_DISTRIBUTED: "true", PROCESSES_PER_HOST: "2"}
    assert distribution_hyperparameters(False) == {TORCH_DISTRIBUTED: "false"}
    assert read_flag(None) is None and read_flag("True") is True and read_flag(False) is False


def test_batch_size_is_the_global_batch():
    assert per_rank_batch_size(64, 1) == 64
    assert per_rank_batch_size(64, 8) == 8
    with pytest.raises(ValueError, match=r"batch-size 64 .* among the 3 training processes .* use 63 or 66"):
        per_rank_batch_size(64, 3)
    with pytest.raises(ValueError, match=r"use 4$"):
        per_rank_batch_size(2, 4)
