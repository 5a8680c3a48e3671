"""The debugging rules fire on the runs built to show their problem, and stay quiet on a healthy run."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from report_helpers import hooked_run
from smdebug.trials import create_trial

from scripts.aws import custom_rules
from scripts.report import rules
from scripts.report.sources import load_local_run

ALL_RULES = {rule.__name__ for rule in rules.RULES}


def outcomes_of(out_dir):
    """The rules' outcomes on a run's tensors, wherever its hook wrote them."""
    return {outcome.rule: outcome for outcome in rules.run_rules(load_local_run(out_dir).trial)}


@pytest.fixture(scope="module")
def hooked_runs(tmp_path_factory):
    """What the trainer cannot be made to do, from the tiny hooked loop: a deep sigmoid
    network and a badly scaled initialisation (plus a healthy run of the same loop)."""
    root = tmp_path_factory.mktemp("rule_runs")
    return {name: hooked_run(root / name, name) for name in ("healthy", "vanishing", "poor_init")}


@pytest.fixture(scope="module")
def runs(hooked_runs, healthy_run, overfit_run, no_learning_run):
    real = {"healthy_trainer": healthy_run, "overfit": overfit_run, "no_learning": no_learning_run}
    return {**hooked_runs, **real}


@pytest.mark.parametrize(("run", "expected"), [
    ("no_learning", {"LossNotDecreasing"}),
    ("overfit", {"Overfit"}),
    ("vanishing", {"VanishingGradient"}),
    ("poor_init", {"PoorWeightInitialization"}),
])
def test_each_problem_run_triggers_its_rule_and_only_it(runs, run, expected):
    outcomes = outcomes_of(runs[run])
    triggered = {name for name, outcome in outcomes.items() if outcome.triggered}
    assert triggered == expected, {name: outcomes[name].message for name in triggered}
    for name in expected:
        assert outcomes[name].evaluated and outcomes[name].violations > 0
        assert outcomes[name].first_step is not None and outcomes[name].message
        assert outcomes[name].advice == getattr(rules, name).ADVICE


@pytest.mark.parametrize("run", ["healthy_trainer", "healthy"])
def test_a_healthy_run_is_checked_by_every_rule_and_triggers_none(runs, run):
    outcomes = outcomes_of(runs[run])
    assert set(outcomes) == ALL_RULES
    for outcome in outcomes.values():
        assert outcome.evaluated, f"{outcome.rule} saw too little data ({outcome.datapoints} points)"
        assert not outcome.triggered, f"{outcome.rule}: {outcome.message}"


def test_the_default_hook_gives_every_rule_its_data(trained_run):
    """The trainer's local default hook (no SageMaker Debugger) saves the loss at every training and
    evaluation step, so the loss rules judge the run too, Overfit included."""
    outcomes = outcomes_of(trained_run)
    for rule in ALL_RULES:
        assert outcomes[rule].evaluated, (rule, outcomes[rule].message)
    for rule in ("VanishingGradient", "PoorWeightInitialization"):
        assert not outcomes[rule].triggered, outcomes[rule].message


def test_rules_take_their_parameters_as_strings_as_sagemaker_passes_them(runs):
    trial = load_local_run(runs["healthy_trainer"]).trial
    # A threshold no healthy loss can meet makes the loss rule fire: the parameters are really used.
    strict = rules.LossNotDecreasing(trial, mode="train", window="3", min_decrease_percent="99.9",
                                           patience="1")
    outcome = rules.run_rule(strict, trial)
    assert outcome.triggered and "latest 3 saved steps" in outcome.message
    assert "min_decrease_percent=99.9" in strict.report["RuleParameters"]
    loose = rules.Overfit(trial, min_rise_percent="0", min_rise="0")
    assert rules.run_rule(loose, trial).evaluated


def test_bad_rule_parameters_are_named(runs):
    trial = create_trial(str(runs["healthy"] / "output" / "tensors"))
    with pytest.raises(ValueError, match="mode must be one of"):
        rules.LossNotDecreasing(trial, mode="testing")
    with pytest.raises(ValueError, match="window and patience"):
        rules.LossNotDecreasing(trial, window="0")


def test_a_run_with_too_few_steps_is_reported_as_not_evaluated(runs):
    outcomes = outcomes_of(runs["poor_init"])  # one epoch: too short for the loss trend rules
    assert not outcomes["LossNotDecreasing"].evaluated and not outcomes["LossNotDecreasing"].triggered


def test_the_rules_file_stands_alone_for_the_sagemaker_rule_evaluator(runs, tmp_path):
    """It imports nothing but the standard library, numpy and smdebug, and loads from its path alone."""
    tree = ast.parse(rules.__spec__.loader.get_source(rules.__name__))
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"__future__", "math", "typing", "numpy", "smdebug"}
    # As the rule evaluator does: load the file by path, outside the project, and invoke one rule.
    script = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('custom_rules', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "from smdebug.trials import create_trial\n"
        "from smdebug.rules.rule_invoker import invoke_rule\n"
        "from smdebug.exceptions import RuleEvaluationConditionMet\n"
        "rule = module.LossNotDecreasing(base_trial=create_trial(sys.argv[2]), window='5')\n"
        "try:\n"
        "    invoke_rule(rule, start_step=0, end_step=len(rule.base_trial.steps()), raise_eval_cond=True)\n"
        "except RuleEvaluationConditionMet:\n"
        "    print('condition met')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, rules.__file__, load_local_run(runs["no_learning"]).tensors_location],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "condition met" in result.stdout


def test_rule_configurations_name_the_regions_image_and_reject_what_sagemaker_would():
    source = "s3://bucket/rules/rules.py"
    [entry] = custom_rules.debug_rule_configurations(source, "cn-north-1", rules=("Overfit",))
    assert entry["RuleEvaluatorImage"] == (
        "617202126805.dkr.ecr.cn-north-1.amazonaws.com.cn/sagemaker-debugger-rule-evaluator:latest"
    )
    assert entry["RuleParameters"] == {"source_s3_uri": source, "rule_to_invoke": "Overfit"}
    with pytest.raises(ValueError, match="region 'mars-1'"):
        custom_rules.debug_rule_configurations(source, "mars-1")
    [own_image] = custom_rules.debug_rule_configurations(source, "mars-1", ("Overfit",), image_uri="my/image")
    assert own_image["RuleEvaluatorImage"] == "my/image"
    with pytest.raises(ValueError, match=r"unknown rules \['Overtrain'\]"):
        custom_rules.debug_rule_configurations(source, "us-east-1", rule_parameters={"Overtrain": {}})
    with pytest.raises(ValueError, match=r"s3:// URI of a \.py file"):
        custom_rules.debug_rule_configurations("rules/rules.py", "us-east-1")
    assert custom_rules.rules_source_uri("s3://bucket/rules") == source
