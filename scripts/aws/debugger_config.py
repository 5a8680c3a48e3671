"""SageMaker Debugger and profiler settings of a training job, as CreateTrainingJob fields.

SDK v3's ``ModelTrainer`` cannot carry these, so they are built here as plain request dicts
(from the SDK's ``rule_configs`` and its per-region rule image table) and sent with boto3.

The hook saves what the built-in rules read: ``gradients`` (VanishingGradient), ``relu_input``
(PoorWeightInitialization) and ``losses`` (Overfit, Overtraining, LossNotDecreasing), plus
``weights`` and ``biases`` for the debugging report. The rules' own defaults save every 500
steps, which a dogImages run (about 100 steps an epoch) would sample only a few times; we save
every ``save_interval`` steps, and the validation loss at every evaluation step, which Overfit
and Overtraining compare with the training loss; parameters and gradients only in training.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from classifier import sagemaker_env
from scripts.aws.settings import LaunchError

BUILT_IN_RULES = (
    "vanishing_gradient",
    "overfit",
    "overtraining",
    "poor_weight_initialization",
    "loss_not_decreasing",
)
# Collections a rule reads that its base configuration in rule_configs does not declare.
EXTRA_RULE_COLLECTIONS = {"overfit": ("losses",), "overtraining": ("losses",)}
REPORT_COLLECTIONS = ("weights", "biases")
# Parameters and gradients do not change during evaluation: saved in training steps only.
TRAIN_ONLY_COLLECTIONS = ("gradients", "weights", "biases")
PROFILER_REPORT_RULE = "ProfilerReport"
PROFILING_INTERVAL_MS = 500
# Where SageMaker's hook writes inside the container (our trainer's default too).
HOOK_LOCAL_PATH = str(PurePosixPath(sagemaker_env.DEFAULT_BASE_DIR) / "output" / "tensors")


def rule_evaluator_image(region: str) -> str:
    """The account's Debugger rule image for ``region`` (the SDK's table of AWS accounts)."""
    from sagemaker.core.debugger import get_rule_container_image_uri

    try:
        return get_rule_container_image_uri(None, region)
    except ValueError as error:
        raise LaunchError(f"SageMaker Debugger rules are not available in {region}: {error}") from error


def _built_in_rules():
    from sagemaker.core.debugger import Rule, rule_configs

    return {name: Rule.sagemaker(getattr(rule_configs, name)()) for name in BUILT_IN_RULES}


def hook_collections(save_interval: int) -> list[dict]:
    """The CollectionConfigurations the hook saves: every rule's collections, then the report's."""
    interval = str(save_interval)
    collections: dict[str, dict[str, str]] = {}
    for name, rule in _built_in_rules().items():
        declared = {c.name: dict(c.parameters or {}) for c in rule.collection_configs}
        for extra in EXTRA_RULE_COLLECTIONS.get(name, ()):
            declared.setdefault(extra, {})
        for collection, parameters in declared.items():
            collections.setdefault(collection, {}).update({**parameters, "save_interval": interval})
    collections.setdefault("losses", {})["eval.save_interval"] = "1"
    for name in REPORT_COLLECTIONS:
        collections.setdefault(name, {"save_interval": interval})
    for name in TRAIN_ONLY_COLLECTIONS:
        collections[name]["eval.end_step"] = "0"  # smdebug: no evaluation step is saved
    return [{"CollectionName": name, "CollectionParameters": parameters}
            for name, parameters in collections.items()]


def debug_hook_config(s3_output_path: str, save_interval: int) -> dict:
    return {
        "S3OutputPath": s3_output_path,
        "LocalPath": HOOK_LOCAL_PATH,
        "HookParameters": {"save_interval": str(save_interval)},
        "CollectionConfigurations": hook_collections(save_interval),
    }


def debug_rule_configurations(region: str) -> list[dict]:
    """The five built-in rules, each with the rule image of ``region`` filled in."""
    image = rule_evaluator_image(region)
    configurations = []
    for rule in _built_in_rules().values():
        rule.image_uri = image  # the SDK leaves a placeholder for its estimator to replace
        configurations.append(rule.to_debugger_rule_config_dict())
    return configurations


def profiler_config(s3_output_path: str) -> dict:
    """System monitoring (CPU, GPU, memory, I/O); smdebug's framework profiling is gone for PyTorch 2."""
    return {"S3OutputPath": s3_output_path, "ProfilingIntervalInMilliseconds": PROFILING_INTERVAL_MS,
            "DisableProfiler": False}


def profiler_rule_configurations(region: str) -> list[dict]:
    from sagemaker.core.debugger import ProfilerRule, rule_configs

    rule = ProfilerRule.sagemaker(rule_configs.ProfilerReport())
    rule.image_uri = rule_evaluator_image(region)
    return [rule.to_profiler_rule_config_dict()]
