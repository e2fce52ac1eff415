"""Evaluation: worst-case accuracy, sanity checks that fire on broken set-ups, detection wiring, the
report schema, and bin/evaluate end to end and on bad input (small CNN trained briefly on MNIST-5k).
"""

import dataclasses
import functools
import inspect
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import attacks, detection, export
from tf_metric_robust.config import EvalConfig, EvaluateRun, UserError
from tf_metric_robust.evaluation import run as evaluation_run
from tf_metric_robust.evaluation.evaluate import evaluate
from tf_metric_robust.evaluation.model_fns import ModelFns
from tf_metric_robust.evaluation.outputs import write_figures
from tf_metric_robust.evaluation.plan import build_plan, resolve_attack
from tf_metric_robust.evaluation.report_schema import SchemaError, check_report

pytestmark = pytest.mark.slow  # end to end: bin/ subprocesses or full runs (make test-fast skips)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A tiny threat model: every attack runs 3 steps on 60 examples.
TINY = EvalConfig(eps=0.3, step_size=0.1, steps=3, eps_sweep=(0.0, 0.1, 0.3), steps_sweep=(1, 3))


@pytest.fixture(scope="module")
def trained(trained_small_cnn):
    """(network, ModelFns, x [60], y [60]): the session's small CNN; x, y held out."""
    network, images, labels = trained_small_cnn
    x, y = images[::3][:60], labels[::3][:60]
    return network, ModelFns(network), x, y


@pytest.fixture(scope="module")
def normal(trained):
    network, fns, x, y = trained
    return evaluate(fns, (x, y), TINY, batch_size=30)


def _checks(result):
    return {c["name"]: c["passed"] for c in result.report["sanity"]["checks"]}


def test_normal_model_passes_every_check(normal):
    report = normal.report
    assert report["clean_accuracy"] > 0.8
    assert _checks(normal) == {name: True for name in _checks(normal)}, report["sanity"]
    assert report["sanity"]["passed"]
    # Worst case = AND of clean and every run inside the threat model, <= each of them.
    expected = normal.correct["clean"].copy()
    for name in report["robust_attacks"]:
        expected &= normal.correct[name]
    np.testing.assert_array_equal(normal.correct["robust"], expected)
    assert report["robust_accuracy"] <= min(
        report["attacks"][n]["accuracy"] for n in report["robust_attacks"]
    )
    assert report["attacks"]["pgd"]["accuracy"] < 0.2  # a natural model falls at eps 0.3
    assert not report["attacks"]["pgd_large_eps"]["counts_for_robust"]
    for entry in report["attacks"].values():  # 60 examples in shards of 30: two step calls
        assert entry["calls"] == 2
        assert 0 < entry["steady_call_seconds"] and 0 < entry["first_call_seconds"]
        assert entry["first_call_seconds"] + entry["steady_call_seconds"] <= entry["seconds"]


def test_gradient_masking_is_flagged(trained, caplog):
    """A quantiser with zero input gradient (stop_gradient trick) fails the gradient check."""
    network, _, x, y = trained

    def masked(images):
        quantised = tf.stop_gradient(tf.round(images * 4.0) / 4.0) + 0.0 * images
        return network(quantised, training=False)["logits"]

    config = EvalConfig(
        eps=0.3, step_size=0.1, steps=3, attacks=("fgsm",), eps_sweep=(), steps_sweep=()
    )
    with caplog.at_level(logging.WARNING, logger="tf_metric_robust.evaluation.sanity"):
        result = evaluate(masked, (x, y), config, batch_size=60)
    checks = _checks(result)
    assert checks["input_gradients_nonzero_finite"] is False
    assert checks["eps_zero_is_clean"] is True
    assert not result.report["sanity"]["passed"]
    assert "input_gradients_nonzero_finite FAILED" in caplog.text
    gradient_check = next(
        c
        for c in result.report["sanity"]["checks"]
        if c["name"] == "input_gradients_nonzero_finite"
    )
    assert gradient_check["value"] == 1.0


def test_wrong_sign_attack_is_flagged(trained):
    """PGD that descends the loss (targeted at the true label) fails the large-eps check."""
    _, fns, x, y = trained

    descending_pgd = functools.partial(attacks.pgd, targeted=True)  # toward the true label
    registry = {**attacks.ATTACKS, "pgd": descending_pgd}
    config = EvalConfig(
        eps=0.3, step_size=0.1, steps=3, attacks=("pgd",), eps_sweep=(), steps_sweep=()
    )
    result = evaluate(fns, (x, y), config, registry=registry, batch_size=30)
    checks = _checks(result)
    assert checks["large_eps_breaks_model"] is False
    assert checks["accuracy_non_increasing_in_eps"] is None  # no sweep: skipped, not passed
    assert result.report["attacks"]["pgd_large_eps"]["accuracy"] > 0.8


def test_attack_leaving_the_ball_and_masking_at_the_data_are_flagged(trained):
    """End to end with the short sanity runs: an attack whose result leaves the eps-ball fails
    the bound check; a model whose gradient is zero exactly on the pixel grid (where the data
    lie: a zero start never moves, a random start leaves the grid) fails the start-gap check."""
    network, fns, x, y = trained
    config = EvalConfig(
        eps=0.3, step_size=0.1, steps=20, attacks=("pgd",), eps_sweep=(), steps_sweep=()
    )

    def leaking_pgd(model_fn, images, labels, *, eps, **kwargs):
        x_adv = attacks.pgd(model_fn, images, labels, eps=eps, **kwargs)
        return tf.clip_by_value(x_adv + 0.01 * tf.cast(eps > 0, tf.float32), 0.0, 1.0)

    leaking_pgd.__signature__ = inspect.signature(attacks.pgd)
    result = evaluate(
        fns, (x, y), config, registry={**attacks.ATTACKS, "pgd": leaking_pgd}, batch_size=30
    )
    checks = _checks(result)
    assert checks["inside_eps_ball_and_box"] is False and checks["eps_zero_is_clean"] is True

    def masked_on_grid(images):
        on_grid = tf.abs(images * 255 - tf.round(images * 255)) < 1e-3
        return network(tf.where(on_grid, tf.stop_gradient(images), images), training=False)[
            "logits"
        ]

    result = evaluate(masked_on_grid, (x, y), config, batch_size=30)
    checks = _checks(result)
    assert checks["random_vs_zero_start_gap"] is False, result.report["sanity"]
    attacks_run = result.report["attacks"]
    assert attacks_run["pgd_zero_start"]["accuracy"] > attacks_run["pgd_random_start"]["accuracy"]


def test_plan_shares_equal_runs_and_marks_the_threat_model():
    plan = build_plan(TINY.resolve(), attacks.ATTACKS)
    assert plan.main == ["fgsm", "pgd", "pgd_cw", "mifgsm"]
    assert plan.specs["pgd_cw"].kwargs["loss"] == "cw"
    assert plan.specs["mifgsm"].kwargs["step_size"] == pytest.approx(0.1)  # eps / steps
    # PGD at eps with 3 steps = the eps sweep's 0.3 point = the steps sweep's 3 = random start.
    assert dict(plan.eps_sweep)[0.3] == dict(plan.steps_sweep)[3] == "pgd"
    assert plan.roles["eps_zero"] == "pgd_eps0"
    assert plan.specs["pgd_eps0"].kwargs["steps"] == 1
    assert not plan.specs[plan.roles["large_eps"]].counts_for_robust
    assert all(
        spec.counts_for_robust
        for name, spec in plan.specs.items()
        if name != plan.roles["large_eps"]
    )
    assert resolve_attack("pgd_cw", attacks.ATTACKS) == ("pgd", {"loss": "cw"})
    with pytest.raises(UserError, match="unknown attack 'nosuch'"):
        resolve_attack("nosuch", attacks.ATTACKS)


def test_config_defaults_and_validation():
    cifar = EvalConfig().resolve("cifar10")
    assert (cifar.eps, cifar.step_size, cifar.steps) == (8 / 255, 1 / 255, 20)
    mnist = EvalConfig().resolve("mnist5k")
    assert (mnist.eps, mnist.step_size, mnist.steps) == (0.3, 0.01, 100)
    with pytest.raises(UserError, match="eps must be in"):
        EvalConfig(eps=1.5)
    with pytest.raises(UserError, match="set eps, step_size, steps"):
        EvalConfig().resolve(None)
    other = EvalConfig(eps=0.1, step_size=0.01, steps=8).resolve("image_folder:/x")
    assert other.eps_sweep == (0.0, 0.025, 0.05, 0.1, 0.15, 0.2)
    assert other.steps_sweep == (1, 2, 4, 8, 16) and other.detection_eps == ()


class _FixedDetector:
    """Stands in for a detector: the first `score` call gets the clean inputs, the rest attacks."""

    def __init__(self, *args, separating, **kwargs):
        self.calls, self.separating, self.k, self.score_type = 0, separating, 1, "fixed"
        self.covariance = "per_class"  # the report's config names the Gaussian's covariance
        self.rng = np.random.default_rng(0)
        self.reference_labels = np.zeros(7)

    def describe(self):
        return {"detector": "fixed"}

    def classify(self, embeddings):
        return tf.zeros([len(embeddings)], tf.int32)

    def score(self, embeddings, predictions):
        self.calls += 1
        n = len(predictions)
        if self.separating:
            return tf.fill([n], 0.0 if self.calls % 2 == 1 else 1.0)
        return tf.constant(self.rng.random(n), tf.float32)


@pytest.mark.parametrize("separating, low, high", [(True, 0.999, 1.0), (False, 0.3, 0.7)])
def test_detection_auc_wiring(trained, monkeypatch, separating, low, high):
    _, fns, x, y = trained
    monkeypatch.setattr(
        detection, "build", lambda *a, **k: _FixedDetector(*a, separating=separating, **k)
    )
    config = EvalConfig(
        eps=0.3,
        step_size=0.1,
        steps=3,
        attacks=("fgsm",),
        eps_sweep=(),
        steps_sweep=(),
        detection=True,
        detection_eps=(0.3,),
        detection_steps=3,
        detection_weights=(),
    )
    result = evaluate(fns, (x, y), config, reference=(x, y), batch_size=30)
    (entry,) = result.report["detection"]["attacks"]
    assert low <= entry["detectors"]["gaussian"]["plain"]["auc_clean_vs_adversarial"] <= high
    assert set(result.roc_curves) == {"gaussian, PGD-3 eps 0.3"}


def test_real_detector_and_report_schema(trained, normal, tmp_path, mnist5k_arrays):
    _, fns, x, y = trained
    images, labels = mnist5k_arrays
    rows = np.random.default_rng(0).permutation(len(labels))[:300]
    config = EvalConfig(
        eps=0.3,
        step_size=0.1,
        steps=3,
        attacks=("pgd",),
        eps_sweep=(0.0, 0.3),
        steps_sweep=(1, 3),
        detection=True,
        detection_eps=(0.3, 0.4),
        detection_steps=3,
        detection_weights=(1.0,),
        detection_reference=300,
        detection_k=10,
    )
    result = evaluate(
        fns, (x, y), config, reference=(images[rows], labels[rows]), batch_size=30, num_examples=40
    )
    report = result.report
    assert report["data"]["num_examples"] == 40
    assert report["detection"]["reference_examples"] == 300
    for entry in report["detection"]["attacks"]:
        for numbers in entry["detectors"].values():
            assert 0.0 <= numbers["plain"]["auc_clean_vs_adversarial"] <= 1.0
    report["figures"] = write_figures(result, str(tmp_path))
    assert set(report["figures"]) == {"eps", "steps", "roc"}
    for name in report["figures"].values():
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    _assert_report_schema(json.loads(json.dumps(report)))


def _assert_report_schema(report):
    """The declared layout (report_schema.py) and the values it cannot express."""
    check_report(report)
    n = report["data"]["num_examples"]
    per_example = report["per_example"]
    assert len(per_example["labels"]) == len(per_example["robust"]) == n
    assert all(len(p) == n for p in per_example["predictions"].values())
    assert set(report["attacks"]) <= set(per_example["predictions"])
    accuracies = [report["clean_accuracy"], report["robust_accuracy"]]
    accuracies += [entry["accuracy"] for entry in report["attacks"].values()]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert report["robust_accuracy"] == np.mean(per_example["robust"])
    for entry in report["attacks"].values():
        assert "eps" in entry["settings"]
    assert report["metrics"]["eval/clean_accuracy"] == report["clean_accuracy"]


def test_report_check_names_the_first_wrong_key(normal):
    """check_report names the first key, in the declaration's order, that is missing, undeclared
    or of the wrong type."""
    report = json.loads(json.dumps(normal.report))
    check_report(report)
    missing = object()
    cases = {
        "report.sanity: missing": {("sanity",): missing, ("per_example", "robust", 0): 1},
        "report.attacks.pgd.accuracy: expected float, got str": {
            ("attacks", "pgd", "accuracy"): "0.5"
        },
        "report.sweeps.eps[1].extra: not a key of EpsPoint": {("sweeps", "eps", 1, "extra"): 1},
        "report.suite: expected Suite (a dict), got str": {("suite",): "autoattack"},
        "report.per_example.robust[3]: expected bool, got int": {("per_example", "robust", 3): 1},
        "report.distribution.replicas: expected int, got float": {
            ("distribution", "replicas"): 1.0
        },
    }
    for message, edits in cases.items():
        broken = json.loads(json.dumps(report))
        for (*parents, key), value in edits.items():
            node = functools.reduce(lambda tree, k: tree[k], parents, broken)
            if value is missing:
                del node[key]
            else:
                node[key] = value
        with pytest.raises(SchemaError) as error:
            check_report(broken)
        assert str(error.value) == message


def test_saved_model_of_a_run_matches_network(trained, tmp_path):
    """A model_dir without checkpoints falls back to its (versioned) saved_model/."""
    network, fns, x, y = trained
    model_dir = str(tmp_path / "run")
    _write_run(model_dir)
    path = export.export_saved_model(network, os.path.join(model_dir, "saved_model"))
    loaded, info, dataset, run_dir = evaluation_run.load_model(EvaluateRun(model_dir=model_dir))
    assert (info["source"], info["saved_model"], dataset) == ("saved_model", path, "mnist5k")
    np.testing.assert_allclose(loaded.outputs(x[:10])[0], fns.outputs(x[:10])[0], atol=1e-4)
    config = EvalConfig(
        eps=0.3, step_size=0.1, steps=2, attacks=("fgsm",), eps_sweep=(), steps_sweep=()
    )
    result = evaluate(loaded, (x[:20], y[:20]), config, batch_size=20)
    assert result.report["sanity"]["checks"][0]["passed"]  # eps 0 = clean through the signature


def _start_bin_evaluate(*args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "bin", "evaluate"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _write_run(model_dir, network=None):
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "recipe.json"), "w") as f:
        json.dump(
            {"dataset": "mnist5k", "model": "small_cnn", "model_kwargs": {}, "mode": "natural"}, f
        )
    if network is not None:
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(network=network), os.path.join(model_dir, "checkpoints"), 1
        )
        manager.save(checkpoint_number=150)


def test_bin_evaluate_user_errors(tmp_path):
    """Each bad input gives one 'error:' line on stderr, no traceback, a non-zero exit."""
    model_dir = str(tmp_path / "run")
    _write_run(model_dir)  # a recipe but neither checkpoint nor SavedModel
    cases = {
        "--eps must be in [0, 1]": ["--eps=1.5"],
        "unknown attack 'nosuch'": ["--attacks=pgd,nosuch"],
        "no checkpoint in": [],
    }
    # Started together: each process spends most of its time importing TensorFlow.
    running = {
        message: _start_bin_evaluate(f"--model_dir={model_dir}", *args)
        for message, args in cases.items()
    }
    # Checked before TensorFlow is imported: a typo in a path fails at once.
    running[f"--model_dir {tmp_path}/typo does not exist"] = _start_bin_evaluate(
        f"--model_dir={tmp_path}/typo"
    )
    running["exactly one of --model_dir and --saved_model"] = _start_bin_evaluate(
        f"--model_dir={model_dir}", f"--saved_model={model_dir}"
    )
    for message, process in running.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode != 0 and "Traceback" not in stderr, stderr
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], stderr


def test_bin_evaluate_end_to_end(trained, tmp_path):
    network, _, _, _ = trained
    model_dir = str(tmp_path / "run")
    _write_run(model_dir, network)
    process = _start_bin_evaluate(
        f"--model_dir={model_dir}",
        f"--data_dir={tmp_path / 'data'}",
        "--num_examples=40",
        "--batch_size=20",
        "--attacks=fgsm,pgd_cw",
        "--steps=2",
        "--step_size=0.15",
        "--eps_sweep=0,0.1,0.3",
        "--steps_sweep=1,2",
        "--detection",
        "--detection_eps=0.3,0.4",
        "--detection_steps=2",
        "--detection_weights=1",
        "--detection_reference=200",
        "--detection_k=10",
    )
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    report_path = os.path.join(model_dir, "evaluation", "latest", "report.json")
    with open(report_path) as f:
        report = json.load(f)
    name = report["outputs"]["name"]
    assert os.path.realpath(report_path) == os.path.join(
        os.path.realpath(model_dir), "evaluation", name, "report.json"
    )
    _assert_report_schema(report)
    assert report["model"]["step"] == 150 and report["model"]["checkpoint"].endswith("ckpt-150")
    assert report["data"] == {
        "dataset": "mnist5k",
        "split": "test",
        "num_examples": 40,
        "num_examples_requested": 40,
        "batch_size": 20,
        "data_dir": str(tmp_path / "data"),
    }
    assert report["threat_model"]["eps"] == 0.3 and len(report["detection"]["attacks"]) == 2
    assert report["sanity"]["passed"], report["sanity"]
    for figure in ("accuracy_vs_eps.png", "accuracy_vs_steps.png", "detection_roc.png"):
        assert os.path.getsize(os.path.join(model_dir, "evaluation", name, figure)) > 1000
    # Named by what ran: threat model, attacks, detection, then the settings' hash.
    assert "-linf-eps0.3-steps2-fgsm+pgd_cw-detection-" in name
    assert os.listdir(os.path.join(model_dir, "tensorboard", "evaluate", name))
    assert f"tensorboard: {os.path.join(model_dir, 'tensorboard', 'evaluate', name)}" in stdout
    assert "robust accuracy (worst)" in stdout
    _assert_progress_lines(stdout.splitlines(), report)


def _assert_progress_lines(lines, report):
    """With stdout a pipe: a header naming every part, then one line per finished attack run,
    the sanity checks, each AutoAttack member and adaptive run, and detection, each timed."""
    start = next(i for i, line in enumerate(lines) if line.startswith("Evaluation plan: "))
    header = "\n".join(lines[start : start + 8])
    config = report["config"]
    assert f"  attacks: {', '.join(config['attacks'])}\n" in header
    assert "  eps sweep (PGD): eps " + ", ".join(f"{e:.4g}" for e in config["eps_sweep"]) in header
    assert "  steps sweep (PGD): steps " + ", ".join(map(str, config["steps_sweep"])) in header
    assert "  sanity checks (Carlini et al. 2019)" in header
    assert ("  AutoAttack (" in header) == (config["suite"] != "none")
    assert ("  detection (gaussian, knn): " in header) == config["detection"]
    timed = re.compile(r"\(\d+\.\d s\)$")
    done = [line for line in lines[start:] if timed.search(line)]
    count = len(report["attacks"])  # report.json sorts its keys: the index is the run order
    runs = [re.match(rf"\[(\d+)/{count}\] (\S+) \(", line) for line in done]
    runs = [match.groups() for match in runs if match]
    assert sorted(name for _, name in runs) == sorted(report["attacks"])
    assert sorted(int(index) for index, _ in runs) == list(range(1, count + 1))
    assert sum(line.startswith("sanity checks: ") for line in done) == 1
    if report["suite"]:
        for member in report["suite"]["attacks"]:
            assert sum(line.startswith(f"AutoAttack {member}: ") for line in done) == 1
        assert sum(line.startswith("AutoAttack (") for line in done) == 1
    if report["detection"]:
        adaptive = [
            r
            for e in report["detection"]["attacks"]
            for d in e["detectors"].values()
            for r in d["adaptive_sweep"]
        ]
        assert sum(line.startswith("detection: adaptive attack on ") for line in done) == len(
            adaptive
        )
        assert sum(line.startswith("detection: eps ") for line in done) == 1


def test_progress_goes_to_the_callable_only(trained, mnist5k_arrays, capfd):
    """The library prints nothing; the `progress` callable gets the header and a timed line per
    finished part (attacks, sweeps, sanity checks, AutoAttack, detection)."""
    _, fns, x, y = trained
    images, labels = mnist5k_arrays
    rows = np.random.default_rng(0).permutation(len(labels))[:300]
    config = dataclasses.replace(
        TINY,
        detection=True,
        detection_eps=(0.3,),
        detection_steps=2,
        detection_weights=(1.0,),
        detection_reference=300,
        detection_k=10,
        suite="autoattack",
        suite_steps=2,
        suite_queries=10,
    )
    lines = []
    result = evaluate(
        fns,
        (x[:20], y[:20]),
        config,
        reference=(images[rows], labels[rows]),
        batch_size=20,
        progress=lines.append,
    )
    assert capfd.readouterr().out == ""
    assert lines[0].startswith("Evaluation plan: 20 examples, threat model linf eps 0.3")
    _assert_progress_lines(lines, result.report)


def test_two_evaluations_leave_two_reports(trained, tmp_path, mnist5k_data_dir):
    """Each evaluation keeps its folder, figures and TensorBoard run (a second one neither
    replaces the first report nor leaves its PNGs beside it); evaluation/latest points at the
    newest."""
    network, _, _, _ = trained
    model_dir = str(tmp_path / "run")
    _write_run(model_dir, network)
    with_sweep = EvalConfig(
        eps=0.3, step_size=0.15, steps=2, attacks=("fgsm",), eps_sweep=(0.0, 0.3), steps_sweep=()
    )
    without_sweep = EvalConfig(
        eps=0.2, step_size=0.1, steps=2, attacks=("pgd",), eps_sweep=(), steps_sweep=()
    )

    def evaluate(config, output=None):
        return evaluation_run.run(
            EvaluateRun(
                model_dir=model_dir,
                data_dir=mnist5k_data_dir,
                num_examples=20,
                batch_size=20,
                progress=False,
                output=output,
                config=config,
            )
        )

    first, second = evaluate(with_sweep), evaluate(without_sweep)
    names = [first["outputs"]["name"], second["outputs"]["name"]]
    assert names[0][-8:] != names[1][-8:]  # other settings, other hash
    evaluations = os.path.join(model_dir, "evaluation")
    assert sorted(os.listdir(evaluations)) == sorted(names + ["latest"])
    for name, report in zip(names, (first, second)):
        with open(os.path.join(evaluations, name, "report.json")) as f:
            assert json.load(f)["threat_model"] == report["threat_model"]
    assert sorted(os.listdir(os.path.join(evaluations, names[0]))) == [
        "accuracy_vs_eps.png",
        "report.json",
    ]
    assert os.listdir(os.path.join(evaluations, names[1])) == ["report.json"]
    with open(os.path.join(evaluations, "latest", "report.json")) as f:
        assert json.load(f)["outputs"]["name"] == names[1]
    assert sorted(os.listdir(os.path.join(model_dir, "tensorboard", "evaluate"))) == sorted(names)
    # Twice into one --output folder: the first one's figure does not outlive its report; the
    # TensorBoard runs go beside the report, named by time, plan and hash, not into the run.
    output = str(tmp_path / "out")
    first = evaluate(with_sweep, output)
    assert sorted(os.listdir(output)) == [
        "accuracy_vs_eps.png",
        "report.json",
        "report_tensorboard",
    ]
    second = evaluate(without_sweep, output)
    assert sorted(os.listdir(output)) == ["report.json", "report_tensorboard"]
    runs = [first["outputs"]["name"], second["outputs"]["name"]]
    assert "-linf-eps0.3-steps2-fgsm-" in runs[0] and "-linf-eps0.2-steps2-pgd-" in runs[1]
    assert sorted(os.listdir(os.path.join(output, "report_tensorboard"))) == sorted(runs)
    assert second["outputs"]["tensorboard"] == os.path.join(output, "report_tensorboard", runs[1])
    assert sorted(os.listdir(os.path.join(model_dir, "tensorboard", "evaluate"))) == sorted(names)
    # A report file names the folder: <stem>_tensorboard beside it.
    third = evaluate(without_sweep, str(tmp_path / "reports" / "pgd.json"))
    assert third["outputs"]["tensorboard"] == os.path.join(
        str(tmp_path / "reports"), "pgd_tensorboard", third["outputs"]["name"]
    )
    assert sorted(os.listdir(tmp_path / "reports")) == ["pgd.json", "pgd_tensorboard"]
