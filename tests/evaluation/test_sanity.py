"""The sanity checks (evaluation/sanity.py): what their own runs cost against the main attack,
and that each check fails when what it guards is broken (synthetic evidence, no attack run)."""

import numpy as np
import pytest

from tf_metric_robust import attacks
from tf_metric_robust.config import EvalConfig
from tf_metric_robust.evaluation import sanity
from tf_metric_robust.evaluation.plan import build_plan


def _own_steps(plan):
    """Gradient steps of the runs only the sanity checks need (the pass-count they add)."""
    return sum(
        spec.kwargs["steps"]
        for spec in plan.specs.values()
        if spec.groups == ["sanity"] or spec.groups[0] == "sanity"
    )


@pytest.mark.parametrize("dataset", ["mnist5k", "cifar10"])
@pytest.mark.parametrize("sweeps", [True, False])
def test_sanity_runs_cost_at_most_half_the_main_attack(dataset, sweeps):
    config = EvalConfig() if sweeps else EvalConfig(eps_sweep=(), steps_sweep=())
    plan = build_plan(config.resolve(dataset), attacks.ATTACKS)
    main = plan.specs["pgd"].kwargs["steps"]
    assert _own_steps(plan) <= 0.5 * main, {n: s.kwargs for n, s in plan.specs.items()}
    eps_zero = plan.specs[plan.roles["eps_zero"]].kwargs
    assert eps_zero["eps"] == 0.0 and eps_zero["steps"] == 1
    random, zero = (plan.specs[plan.roles[r]].kwargs for r in ("random_start", "zero_start"))
    # The gap compares the same attack from the two starts.
    assert random == {**zero, "random_start": True} and zero["random_start"] is False
    assert random["steps"] * random["step_size"] >= 2 * random["eps"]  # crosses the ball
    if sweeps:  # the eps sweep's eps-0 point is the sanity check's one step
        assert dict(plan.eps_sweep)[0.0] == plan.roles["eps_zero"]


def test_check_steps():
    steps = (1, 3, 8, 20, 40, 100, 1000)
    assert [sanity.check_steps(s) for s in steps] == [1, 3, 3, 3, 6, 10, 10]
    for s in steps[3:]:  # three short runs and the eps-0 step fit in half the main attack
        assert 1 + 3 * sanity.check_steps(s) <= s / 2


class _Thresholds:
    accuracy_tolerance = 0.01
    bound_tolerance = 1e-6
    max_zero_gradient_fraction = 0.01
    large_eps_max_accuracy = 0.1
    start_gap_tolerance = 0.05


def _evidence(n=100, **broken):
    """run_checks' arguments for a sound evaluation of a model 90% clean, 40% under PGD; `broken`
    overrides one piece."""
    plan = build_plan(EvalConfig(eps_sweep=(), steps_sweep=()).resolve("mnist5k"), attacks.ATTACKS)
    labels = np.arange(n) % 10
    clean_correct = np.arange(n) < 0.9 * n
    clean_predictions = np.where(clean_correct, labels, (labels + 1) % 10)
    correct = {name: np.arange(n) < 0.4 * n for name in plan.specs}
    correct[plan.roles["eps_zero"]] = clean_correct
    correct[plan.roles["large_eps"]] = np.zeros(n, bool)
    evidence = dict(
        clean_correct=clean_correct,
        clean_predictions=clean_predictions,
        predictions={name: np.where(c, labels, (labels + 1) % 10) for name, c in correct.items()},
        correct=correct,
        plan=plan,
        violations={name: 0.0 for name in plan.specs},
        gradients={"examples": n, "zero_ce": 0, "zero_cw": 0, "nonfinite": 0},
        thresholds=_Thresholds,
    )
    for key, change in broken.items():
        evidence[key] = change(evidence) if callable(change) else change
    return evidence


def _failed(evidence):
    return {c["name"] for c in sanity.run_checks(**evidence) if c["passed"] is False}


def _with(mapping, key, value):
    return {**mapping, key: value}


def test_sound_evidence_passes_every_check():
    assert _failed(_evidence()) == set()


def test_each_check_fails_when_what_it_guards_is_broken():
    roles = _evidence()["plan"].roles
    wrong = lambda e, name: np.where(  # noqa: E731
        np.arange(100) < 50, (np.arange(100) + 1) % 10, e["predictions"][name]
    )
    cases = {
        # the eps-0 attack moved predictions: the projection or the random start leaks
        "eps_zero_is_clean": dict(
            predictions=lambda e: _with(e["predictions"], roles["eps_zero"], wrong(e, "pgd_eps0"))
        ),
        # an attack left the eps-ball
        "inside_eps_ball_and_box": dict(violations=lambda e: _with(e["violations"], "pgd", 1e-3)),
        # gradient masking: zero input gradients
        "input_gradients_nonzero_finite": dict(
            gradients={"examples": 100, "zero_ce": 30, "zero_cw": 0, "nonfinite": 0}
        ),
        # a large eps that leaves the model standing: the attack is broken
        "large_eps_breaks_model": dict(
            correct=lambda e: _with(e["correct"], roles["large_eps"], np.ones(100, bool))
        ),
        # the zero start stuck where a random start succeeds: masked at the data points
        "random_vs_zero_start_gap": dict(
            correct=lambda e: _with(e["correct"], roles["zero_start"], np.arange(100) < 80)
        ),
        # an attack that helps the model
        "robust_not_above_clean": dict(
            correct=lambda e: _with(e["correct"], "pgd_cw", np.ones(100, bool))
        ),
    }
    for name, broken in cases.items():
        assert name in _failed(_evidence(**broken)), name
