"""The detection protocol end to end on the session's trained small CNN (real MNIST-5k digits):
the adaptive attack beats plain PGD against each detector, evaluate() reports the paper's
numbers, and bin/export's detection_score equals bin/evaluate's for the same images."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import support
from tf_metric_robust import attacks, detection, export
from tf_metric_robust.config import EvalConfig, ExportConfig
from tf_metric_robust.evaluation import detection_protocol
from tf_metric_robust.evaluation.evaluate import evaluate
from tf_metric_robust.evaluation.model_fns import ModelFns
from tf_metric_robust.evaluation.outputs import summary_text, write_figures
from tf_metric_robust.evaluation.report_schema import check_report

pytestmark = (
    pytest.mark.slow
)  # trains beyond a few steps or runs full attacks (make test-fast skips)


@pytest.fixture(scope="module")
def setting(trained_small_cnn, mnist5k_arrays):
    """(network, fns, x [100], y [100], reference images, labels, detectors)."""
    network, x, y = trained_small_cnn
    images, labels = mnist5k_arrays
    held_out = np.arange(len(labels)) % 25 == 0
    rows = np.random.default_rng(0).permutation(np.flatnonzero(~held_out))[:1000]
    fns = ModelFns(network)
    reference = (images[rows], labels[rows])
    config = EvalConfig(detection=True, detection_k=50)
    detectors = detection_protocol.build_detectors(fns, reference, config, num_classes=10)
    return network, fns, x[::2], y[::2], reference, detectors


def _undetected_rate(fns, detector, x, y, x_adv):
    clean_logits, clean_emb = fns.outputs(x)
    threshold = detection.threshold_at_fpr(
        detector.score(clean_emb, tf.argmax(clean_logits, -1)).numpy()
    )
    logits, embedding = fns.outputs(x_adv)
    predicted = tf.argmax(logits, -1)
    scores = detector.score(embedding, predicted).numpy()
    wrong = predicted.numpy() != y
    return float(np.mean(wrong & (scores <= threshold))), float(np.mean(wrong))


@pytest.mark.parametrize("kind", ["gaussian", "knn"])
def test_adaptive_attack_beats_plain_pgd_against_the_detector(setting, kind):
    _, fns, x, y, _, detectors = setting
    detector = detectors[kind]
    settings = dict(eps=0.3, step_size=0.05, steps=10, seed=tf.constant([3, 4], tf.int64))
    plain = attacks.pgd(fns.logits, x, y, **settings)
    adaptive = attacks.adaptive_detector(
        fns.outputs, x, y, detector=detector, weight=1.0, **settings
    )
    delta = np.abs(adaptive.numpy() - x).max()
    assert delta <= 0.3 + 1e-6 and adaptive.numpy().min() >= 0 and adaptive.numpy().max() <= 1
    plain_undetected, plain_wrong = _undetected_rate(fns, detector, x, y, plain)
    adaptive_undetected, adaptive_wrong = _undetected_rate(fns, detector, x, y, adaptive)
    print(
        f"{kind}: misclassified and undetected at 5% FPR: plain PGD {plain_undetected:.2f} "
        f"(misclassified {plain_wrong:.2f}), adaptive {adaptive_undetected:.2f} "
        f"(misclassified {adaptive_wrong:.2f})"
    )
    assert plain_wrong > 0.8  # a natural model falls; the detector is what is being tested
    assert adaptive_undetected >= min(1.0, plain_undetected + 0.05)


def test_adaptive_attack_arguments(setting):
    _, fns, x, y, _, detectors = setting
    with pytest.raises(ValueError, match="weight must be >= 0"):
        attacks.adaptive_detector(
            fns.outputs,
            x,
            y,
            detector=detectors["gaussian"],
            eps=0.3,
            step_size=0.1,
            steps=1,
            weight=-1.0,
        )
    with pytest.raises(TypeError, match="must return \\(logits, embedding\\)"):
        attacks.adaptive_detector(
            fns.logits, x, y, detector=detectors["gaussian"], eps=0.3, step_size=0.1, steps=1
        )
    same = attacks.adaptive_detector(
        fns.outputs, x, y, detector=detectors["knn"], eps=0.0, step_size=0.1, steps=2
    )
    np.testing.assert_array_equal(same.numpy(), x)


def test_evaluate_reports_the_paper_protocol(setting, tmp_path):
    _, fns, x, y, reference, _ = setting
    config = EvalConfig(
        eps=0.3,
        step_size=0.1,
        steps=3,
        attacks=("pgd", "adaptive_detector"),
        eps_sweep=(),
        steps_sweep=(),
        detection=True,
        detection_eps=(0.3,),
        detection_steps=5,
        detection_weights=(1.0,),
        detection_k=20,
    )
    result = evaluate(fns, (x[:40], y[:40]), config, reference=reference, batch_size=20)
    section = result.report["detection"]
    assert section["detector"] == "gaussian" and list(section["detectors"]) == ["gaussian", "knn"]
    (entry,) = section["attacks"]
    assert entry["steps"] == 5 and entry["eps"] == 0.3
    for kind in ("gaussian", "knn"):
        plain, adaptive = (entry["detectors"][kind][k] for k in ("plain", "adaptive"))
        assert 0.0 <= plain["auc_misclassified_vs_correct_all"] <= 1.0
        assert plain["num_clean"] == plain["num_adversarial"] == 40
        # Best of plain and the sweep per image: never fewer evasions than plain alone.
        assert (
            adaptive["undetected_misclassified_at_5pct_fpr"]
            >= plain["undetected_misclassified_at_5pct_fpr"]
        )
        assert sum(adaptive["chosen"].values()) == 40
        assert plain["clean_flagged"] <= 0.05
    assert 0.0 <= section["knn_accuracy"]["clean"] <= 1.0 and section["knn_accuracy"]["k"] == 20
    assert "adaptive_detector" in result.report["attacks"]
    assert result.report["attacks"]["adaptive_detector"]["counts_for_robust"]
    # The adaptive runs at eps 0.3 lie inside the threat model: they count for the worst case.
    report = result.report
    runs = [r["run"] for d in entry["detectors"].values() for r in d["adaptive_sweep"]]
    assert len(runs) == 2 and set(runs) <= set(report["robust_attacks"])
    expected = result.correct["clean"].copy()
    for name in report["robust_attacks"]:
        expected &= result.correct[name]
    np.testing.assert_array_equal(result.correct["robust"], expected)
    assert report["robust_accuracy"] <= min(
        r["accuracy"] for d in entry["detectors"].values() for r in d["adaptive_sweep"]
    )
    assert set(runs) <= set(report["per_example"]["predictions"])
    text = " ".join(summary_text(report).split())
    assert (
        f"robust accuracy (worst) {report['robust_accuracy']:.4f} per example over clean and the "
        f"{len(report['robust_attacks'])} runs inside linf eps 0.3: pgd, adaptive_detector; "
    ) in text
    assert "2 adaptive detection attack runs" in text
    figures = write_figures(result, str(tmp_path))
    assert (tmp_path / figures["roc"]).read_bytes()[:4] == b"\x89PNG"
    check_report(json.loads(json.dumps(result.report)))  # JSON-ready, as declared


def test_adaptive_numbers_never_better_for_the_defender_than_plain(setting):
    """At eps 0.1 the natural model keeps about 70% of the digits under PGD, so the adaptive
    attack can turn correct images misclassified: per detector its paper-protocol AUC, accuracy and
    TPR stay at or below plain PGD's and its undetected rate at or above."""
    _, fns, x, y, reference, _ = setting
    config = EvalConfig(
        eps=0.1,
        step_size=0.025,
        steps=10,
        attacks=("pgd",),
        eps_sweep=(),
        steps_sweep=(),
        detection=True,
        detection_eps=(0.1,),
        detection_steps=10,
        detection_weights=(0.1, 1.0, 10.0),
        detection_k=50,
    )
    result = evaluate(fns, (x, y), config, reference=reference, batch_size=50)
    (entry,) = result.report["detection"]["attacks"]
    assert 0.3 < entry["accuracy"] < 0.95, entry["accuracy"]  # some correct, some fooled
    for kind, numbers in entry["detectors"].items():
        plain, adaptive = numbers["plain"], numbers["adaptive"]
        auc = "auc_misclassified_vs_correct_all"
        print(f"{kind}: AUC plain {plain[auc]:.4f} adaptive {adaptive[auc]:.4f}")
        assert adaptive[auc] <= plain[auc]
        assert adaptive["accuracy"] <= plain["accuracy"]
        assert adaptive["tpr_at_5pct_fpr"] <= plain["tpr_at_5pct_fpr"]
        assert (
            adaptive["undetected_misclassified_at_5pct_fpr"]
            >= plain["undetected_misclassified_at_5pct_fpr"]
        )
        # The classifier alone: the worst case counts every adaptive run (eps 0.1 = the threat).
        for run in numbers["adaptive_sweep"]:
            assert run["run"] in result.report["robust_attacks"]
            assert result.report["robust_accuracy"] <= run["accuracy"]


def test_export_and_evaluate_score_alike(setting, tmp_path, mnist5k_data_dir):
    """bin/export's SavedModel detection_score equals the evaluation detector's score."""
    network, fns, x, y, _, _ = setting
    model_dir = support.write_run_folder(str(tmp_path / "run"), network, step=7)
    config = ExportConfig(
        model_dir=model_dir,
        data_dir=mnist5k_data_dir,
        detection_reference=1000,
        threshold_examples=300,
        warmup=False,
    )
    path, _ = export.export_run(config)
    loaded = tf.saved_model.load(path)
    served = loaded.signatures["serving_default"](images=tf.constant(x))["detection_score"]
    reference = export.reference_examples("mnist5k", size=1000, data_dir=mnist5k_data_dir)
    detectors = detection_protocol.build_detectors(
        fns, reference, EvalConfig(detection=True, detection_reference=1000), num_classes=10
    )
    logits, embedding = fns.outputs(x)
    evaluated = detectors["gaussian"].score(embedding, tf.argmax(logits, -1))
    np.testing.assert_allclose(served.numpy(), evaluated.numpy(), rtol=1e-5, atol=1e-4)
    with open(os.path.join(path, export.DETECTOR_FILE)) as f:
        record = json.load(f)
    assert record["detector"] == "gaussian" and record["covariance"] == "per_class"
    assert record["reference"]["examples"] == 1000 and record["threshold_images"]["examples"] == 300
    assert record["threshold"] == pytest.approx(float(loaded.detector.threshold.numpy()))
    assert json.loads(loaded.detector.description.numpy().decode()) == record
