"""The AutoAttack suite inside an evaluation: its report section, its place in the worst case,
the gradient-masking warning, and bin/evaluate --suite=autoattack end to end (small CNN trained
briefly on MNIST-5k; a few APGD steps and Square queries instead of the paper's 100 and 5000).
"""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import support
from tf_metric_robust.attacks.autoattack import VERSIONS
from tf_metric_robust.config import SUITE_VERSIONS, EvalConfig, UserError
from tf_metric_robust.evaluation import outputs, suite
from tf_metric_robust.evaluation.evaluate import evaluate
from tf_metric_robust.evaluation.model_fns import ModelFns
from tf_metric_robust.evaluation.report_schema import check_report

pytestmark = pytest.mark.slow  # end to end: bin/ subprocesses or full runs (make test-fast skips)

# PGD-3 plus AutoAttack with 5 APGD steps and 100 Square queries; no sweeps.
QUICK = dict(
    step_size=0.04,
    steps=3,
    attacks=("pgd",),
    eps_sweep=(),
    steps_sweep=(),
    suite="autoattack",
    suite_steps=5,
    suite_queries=100,
)


@pytest.fixture(scope="module")
def trained(trained_small_cnn):
    """(network, x [40], y [40]): the session's small CNN; x, y held out."""
    network, images, labels = trained_small_cnn
    return network, images[::5], labels[::5]


@pytest.fixture(scope="module")
def bin_evaluate(trained, tmp_path_factory, mnist5k_data_dir):
    """Starts bin/evaluate --suite=autoattack on a checkpoint run dir; yields (process, dir).

    Started before the in-process tests so that its TensorFlow import overlaps with them.
    """
    network = trained[0]
    model_dir = str(tmp_path_factory.mktemp("suite_run"))
    support.write_run_folder(model_dir, network, step=150)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    process = support.start(
        "bin/evaluate",
        f"--model_dir={model_dir}",
        f"--data_dir={mnist5k_data_dir}",
        "--num_examples=20",
        "--batch_size=20",
        "--attacks=pgd",
        "--eps=0.1",
        "--step_size=0.04",
        "--steps=2",
        "--eps_sweep=",
        "--steps_sweep=",
        "--suite=autoattack",
        "--suite_steps=3",
        "--suite_queries=50",
        "--noprogress",
        env=env,
    )
    yield process, model_dir
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def normal(trained, bin_evaluate):
    network, x, y = trained
    return evaluate(ModelFns(network), (x, y), EvalConfig(eps=0.1, **QUICK), batch_size=40)


def _checks(report):
    return {c["name"]: c for c in report["sanity"]["checks"]}


def test_suite_section_and_worst_case(normal):
    report = normal.report
    section = report["suite"]
    check_report(json.loads(json.dumps(report)))  # the declared suite section, exactly
    assert section["attacks"] == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert list(section["attack_accuracy"]) == section["attacks"]
    assert (section["steps"], section["queries"], section["eps"]) == (5, 100, 0.1)
    assert section["clean_accuracy"] == report["clean_accuracy"] > 0.8
    assert section["robust_accuracy"] == section["attack_accuracy"]["square"]
    assert sum(section["fooled_by"].values()) == round(40 * (1 - section["robust_accuracy"]))
    # Each member's step calls: one shard of 40 where points were left to attack, none elsewhere.
    left = section["clean_accuracy"]
    for name in section["attacks"]:
        times = section["call_times"][name]
        assert times["calls"] == (1 if round(40 * left) else 0), name
        if times["calls"]:
            assert times["first_call_seconds"] > 0.0, name
        else:
            assert times["first_call_seconds"] is None, name
        assert times["steady_call_seconds"] is None  # a single call has no steady state
        left = section["attack_accuracy"][name]
    # APGD is compared with the evaluation's own PGD run.
    assert section["pgd_attack"] == "pgd"
    assert section["pgd_accuracy"] == report["attacks"]["pgd"]["accuracy"]
    assert section["robust_accuracy"] <= section["pgd_accuracy"]
    assert 0.0 < section["pgd_accuracy"] < 1.0  # eps 0.1 leaves something to find
    # The worst case = clean AND every counted attack AND the suite.
    assert "autoattack" in report["robust_attacks"]
    expected = normal.correct["clean"].copy()
    for name in report["robust_attacks"]:
        expected &= normal.correct[name]
    np.testing.assert_array_equal(normal.correct["robust"], expected)
    assert report["robust_accuracy"] <= section["robust_accuracy"]
    assert report["metrics"]["eval/autoattack_accuracy"] == section["robust_accuracy"]
    checks = _checks(report)
    assert checks["suite_square_not_beating_gradient_attacks"]["threshold"] == suite.SQUARE_GAP
    assert checks["suite_apgd_not_far_below_pgd"]["value"] == pytest.approx(
        section["pgd_accuracy"]
        - min(section["attack_accuracy"][n] for n in ("apgd_ce", "apgd_t", "fab_t"))
    )
    fired = any(w.startswith("apgd found much more than pgd") for w in section["warnings"])
    assert checks["suite_apgd_not_far_below_pgd"]["passed"] is not fired
    json.dumps(report)  # JSON-ready


def test_gradient_masking_warning(trained, tmp_path):
    """A stop_gradient input quantiser: PGD and APGD see no gradient, Square still fools it."""
    network, x, y = trained

    def masked(images):
        quantised = tf.stop_gradient(tf.round(images * 32.0) / 32.0)
        return network(quantised, training=False)["logits"]

    result = evaluate(masked, (x, y), EvalConfig(eps=0.15, **QUICK), batch_size=40)
    report = result.report
    section = report["suite"]
    assert any(w.startswith("square beat the gradient attacks") for w in section["warnings"])
    assert section["attack_accuracy"]["square"] < section["attack_accuracy"]["apgd_t"]
    square_check = _checks(report)["suite_square_not_beating_gradient_attacks"]
    assert square_check["passed"] is False and not report["sanity"]["passed"]
    text = outputs.summary_text(report)
    assert "suite autoattack (standard" in text and "WARNING: square beat" in text
    outputs.write_tensorboard(report, str(tmp_path / "tb"), str(tmp_path), step=0)
    assert os.listdir(tmp_path / "tb")


def test_suite_settings_are_checked():
    with pytest.raises(UserError, match="suite must be one of"):
        EvalConfig(suite="fab")
    with pytest.raises(UserError, match="suite_version must be one of"):
        EvalConfig(suite="autoattack", suite_version="custom")
    with pytest.raises(UserError, match=r"suite_queries must be in \[1, inf\), got 0"):
        EvalConfig(suite="autoattack", suite_queries=0)
    config = EvalConfig().resolve("mnist5k")
    assert (config.suite, config.suite_steps, config.suite_queries) == ("none", 100, 5000)
    # The TF-free config lists the versions autoattack implements, no more and no fewer.
    assert SUITE_VERSIONS == tuple(VERSIONS)


def test_bin_evaluate_suite_end_to_end(bin_evaluate):
    process, model_dir = bin_evaluate
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    with open(os.path.join(model_dir, "evaluation", "latest", "report.json")) as f:
        report = json.load(f)
    section = report["suite"]
    check_report(report)  # the declared suite section, exactly
    assert (section["steps"], section["queries"], section["batch_size"]) == (3, 50, 20)
    assert report["config"]["suite"] == "autoattack" and "autoattack" in report["robust_attacks"]
    assert report["robust_accuracy"] <= section["robust_accuracy"]
    assert section["robust_accuracy"] <= section["pgd_accuracy"]
    assert "suite autoattack (standard, eps 0.1)" in stdout
    assert "robust accuracy (worst)" in stdout
    assert os.listdir(os.path.join(model_dir, "tensorboard", "evaluate"))
    # --noprogress drops the bar only: the plan names the suite, each member prints a timed line.
    assert "\n  AutoAttack (standard): apgd_ce, apgd_t, fab_t, square\n" in stdout
    for member in section["attacks"]:
        assert re.search(
            rf"^AutoAttack {member}: robust accuracy [\d.]+ \(\d+\.\d s\)$", stdout, re.M
        )
