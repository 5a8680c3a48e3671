"""Attach this project's debugging rules (``scripts/report/rules.py``) to a SageMaker training job.

SageMaker evaluates custom rules in its rule evaluator image, next to the training job:
the rule source is a Python file in S3 and each ``DebugRuleConfigurations`` entry names
the class to invoke. The functions here build those request parts (pure) and upload the
source (the one edge that talks to AWS). Added to a request from ``scripts.aws.train_job``::

    source = upload_rules_source(s3, "s3://my-bucket/debug-rules/")
    request["DebugRuleConfigurations"] += debug_rule_configurations(source, region)
    hook = request["DebugHookConfig"]
    hook["CollectionConfigurations"] = losses_every_step(hook["CollectionConfigurations"])

Their configuration names carry a prefix (``CustomOverfit``): SageMaker's built-in rules
already use the plain names, and a job's rule names must be unique.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from scripts.aws.ecr import ecr_registry
from scripts.report import rules as project_rules

RULES_SOURCE = Path(project_rules.__file__)
RULE_NAMES = tuple(rule.__name__ for rule in project_rules.RULES)

# The custom rule evaluator images, by region ("Amazon SageMaker Debugger image URIs for custom
# rule evaluators" in the SageMaker developer guide). Built-in rules use another repository.
RULE_EVALUATOR_REPOSITORY = "sagemaker-debugger-rule-evaluator"
RULE_EVALUATOR_ACCOUNTS = {
    "ap-east-1": "645844755771",
    "ap-northeast-1": "670969264625",
    "ap-northeast-2": "326368420253",
    "ap-south-1": "552407032007",
    "ap-southeast-1": "631532610101",
    "ap-southeast-2": "445670767460",
    "ca-central-1": "105842248657",
    "cn-north-1": "617202126805",
    "cn-northwest-1": "658559488188",
    "eu-central-1": "691764027602",
    "eu-north-1": "091235270104",
    "eu-west-1": "606966180310",
    "eu-west-2": "074613877050",
    "eu-west-3": "224335253976",
    "me-south-1": "050406412588",
    "sa-east-1": "466516958431",
    "us-east-1": "864354269164",
    "us-east-2": "840043622174",
    "us-west-1": "952348334681",
    "us-west-2": "759209512951",
}
RULE_INSTANCE_TYPE = "ml.t3.medium"
RULE_VOLUME_SIZE_GB = 30


def rule_evaluator_image(region: str) -> str:
    """The custom rule evaluator image of ``region``."""
    if region not in RULE_EVALUATOR_ACCOUNTS:
        raise ValueError(
            f"no SageMaker Debugger custom rule evaluator image is known for region {region!r}; "
            f"known: {', '.join(sorted(RULE_EVALUATOR_ACCOUNTS))} (or pass image_uri=)"
        )
    return f"{ecr_registry(RULE_EVALUATOR_ACCOUNTS[region], region)}/{RULE_EVALUATOR_REPOSITORY}:latest"


def debug_rule_configurations(
    rules_source_s3_uri: str,
    region: str,
    rules: tuple[str, ...] = RULE_NAMES,
    rule_parameters: dict[str, dict[str, object]] | None = None,
    instance_type: str = RULE_INSTANCE_TYPE,
    volume_size_in_gb: int = RULE_VOLUME_SIZE_GB,
    image_uri: str | None = None,
) -> list[dict]:
    """``DebugRuleConfigurations`` entries that run ``rules`` (class names in rules.py).

    ``rules_source_s3_uri`` is where ``rules.py`` was uploaded; ``rule_parameters`` maps a
    rule name to parameters overriding its defaults (sent as strings, as SageMaker requires).
    """
    if urlparse(rules_source_s3_uri).scheme != "s3" or not rules_source_s3_uri.endswith(".py"):
        raise ValueError(f"rules source must be the s3:// URI of a .py file, got {rules_source_s3_uri!r}")
    unknown = set(rules) | set(rule_parameters or {})
    unknown -= set(RULE_NAMES)
    if unknown:
        raise ValueError(f"unknown rules {sorted(unknown)}; the rules are {', '.join(RULE_NAMES)}")
    image = image_uri or rule_evaluator_image(region)
    return [
        {
            "RuleConfigurationName": project_rules.SAGEMAKER_NAME_PREFIX + name,
            "RuleEvaluatorImage": image,
            "InstanceType": instance_type,
            "VolumeSizeInGB": volume_size_in_gb,
            "RuleParameters": {
                "source_s3_uri": rules_source_s3_uri,
                "rule_to_invoke": name,
                **{key: str(value) for key, value in (rule_parameters or {}).get(name, {}).items()},
            },
        }
        for name in rules
    ]


def losses_every_step(collection_configurations: list[dict]) -> list[dict]:
    """The hook's collections with the training loss saved at every step, as the loss rules need.

    Losses are scalars, so this costs nothing; weights and gradients keep their interval.
    """
    configured = [
        {"CollectionName": entry["CollectionName"],
         "CollectionParameters": dict(entry.get("CollectionParameters", {}))}
        for entry in collection_configurations
    ]
    losses = next((c for c in configured if c["CollectionName"] == "losses"), None)
    if losses is None:
        losses = {"CollectionName": "losses", "CollectionParameters": {}}
        configured.append(losses)
    losses["CollectionParameters"]["save_interval"] = "1"
    losses["CollectionParameters"].pop("train.save_interval", None)  # it would override the above
    return configured


def rules_source_uri(s3_prefix_or_uri: str) -> str:
    """Where the rule source lands: ``s3_prefix_or_uri`` itself if it names a .py file, else inside it."""
    if s3_prefix_or_uri.endswith(".py"):
        return s3_prefix_or_uri
    return f"{s3_prefix_or_uri.rstrip('/')}/{RULES_SOURCE.name}"


def upload_rules_source(s3_client, s3_prefix_or_uri: str) -> str:
    """Uploads ``rules.py`` and returns its ``s3://`` URI, ready for ``debug_rule_configurations``."""
    uri = rules_source_uri(s3_prefix_or_uri)
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"expected an s3://bucket/prefix, got {s3_prefix_or_uri!r}")
    s3_client.upload_file(str(RULES_SOURCE), parsed.netloc, parsed.path.lstrip("/"))
    return uri
