"""What an evaluation shows: PNG figures beside report.json, TensorBoard summaries, and the short
text summary bin/evaluate prints."""

import os
import textwrap

import tensorflow as tf

from tf_metric_robust.evaluation import plots, suite

FIGURES = {
    "eps": "accuracy_vs_eps.png",
    "steps": "accuracy_vs_steps.png",
    "roc": "detection_roc.png",
}


def remove_stale_figures(directory, written):
    """Figures of an earlier evaluation into the same --output folder, which this one did not
    redraw: removed, so every PNG beside a report belongs to it."""
    for kind, name in FIGURES.items():
        path = os.path.join(directory, name)
        if kind not in written and os.path.exists(path):
            os.remove(path)


def write_figures(result, directory):
    """Writes the PNGs an EvaluationResult supports; returns {kind: file name}."""
    report, written = result.report, {}
    eps_points = [(p["eps"], p["accuracy"]) for p in report["sweeps"]["eps"]]
    steps_points = [(p["steps"], p["accuracy"]) for p in report["sweeps"]["steps"]]
    if eps_points:
        plots.plot_accuracy_vs_eps(
            eps_points,
            os.path.join(directory, FIGURES["eps"]),
            clean_accuracy=report["clean_accuracy"],
            threat_eps=report["threat_model"]["eps"],
            norm=report["threat_model"]["norm"],
        )
        written["eps"] = FIGURES["eps"]
    if steps_points:
        plots.plot_accuracy_vs_steps(
            steps_points,
            os.path.join(directory, FIGURES["steps"]),
            clean_accuracy=report["clean_accuracy"],
        )
        written["steps"] = FIGURES["steps"]
    if result.roc_curves:
        plots.plot_roc(result.roc_curves, os.path.join(directory, FIGURES["roc"]))
        written["roc"] = FIGURES["roc"]
    return written


def write_tensorboard(report, directory, figure_dir, step):
    """Scalars (eval/...), sweeps (x axis: steps, or eps in 1/1000), figures and sanity text."""
    writer = tf.summary.create_file_writer(directory)
    with writer.as_default():
        for name, value in report["metrics"].items():
            tf.summary.scalar(name, value, step=step)
        for point in report["sweeps"]["eps"]:
            tf.summary.scalar(
                "eval_sweep/accuracy_vs_milli_eps",
                point["accuracy"],
                step=int(round(point["eps"] * 1000)),
            )
        for point in report["sweeps"]["steps"]:
            tf.summary.scalar(
                "eval_sweep/accuracy_vs_steps", point["accuracy"], step=point["steps"]
            )
        for name, value in detection_lines(report, numbers=True):
            tf.summary.scalar(name, value, step=step)
        for kind, name in report["figures"].items():
            with open(os.path.join(figure_dir, name), "rb") as f:
                image = tf.io.decode_png(f.read(), channels=4)
            tf.summary.image(f"eval_figures/{kind}", image[tf.newaxis], step=step)
        rows = [
            f"| {c['name']} | {_status(c)} | {c['detail']} |" for c in report["sanity"]["checks"]
        ]
        tf.summary.text(
            "eval/sanity", "\n".join(["| check | status | detail |", "|-|-|-|"] + rows), step=step
        )
        if report.get("suite"):
            _suite_summaries(report["suite"], step)
    writer.flush()


def _suite_summaries(section, step):
    """The suite's per-attack accuracies (eval_suite/...) and a text table with its warnings."""
    for name, value in section["attack_accuracy"].items():
        tf.summary.scalar(f"eval_suite/{name}_accuracy", value, step=step)
    rows = [f"| {name} | {value:.4f} |" for name, value in section["attack_accuracy"].items()]
    text = "\n".join(
        [
            f"{section['name']} ({section['version']}), robust accuracy after each "
            "attack (cumulative):",
            "",
            "| attack | accuracy |",
            "|-|-|",
            f"| clean | {section['clean_accuracy']:.4f} |",
            *rows,
            "",
        ]
        + [f"**WARNING**: {message}" for message in section["warnings"]]
    )
    tf.summary.text("eval/suite", text, step=step)


def _status(check):
    return {True: "pass", False: "FAIL", None: "skipped"}[check["passed"]]


def summary_text(report):
    """A short human-readable table of the report (what bin/evaluate prints)."""
    lines = [f"clean accuracy              {report['clean_accuracy']:.4f}"]
    for name, entry in report["attacks"].items():
        if "attacks" in entry["groups"]:
            eps = entry["settings"]["eps"]
            lines.append(f"{name:<27} {entry['accuracy']:.4f}  (eps {eps:.4g})")
    lines += suite.summary_lines(report.get("suite"))
    lines += textwrap.wrap(
        f"robust accuracy (worst)     {report['robust_accuracy']:.4f}  {worst_case_coverage(report)}",
        width=100,
        subsequent_indent=" " * 28,
        break_on_hyphens=False,
    )
    lines += detection_lines(report)
    checks = report["sanity"]["checks"]
    lines += [f"sanity {_status(c):<7} {c['name']}: {c['detail']}" for c in checks]
    return "\n".join(lines)


def worst_case_coverage(report):
    """What the worst case covers: 'per example over clean and the 9 runs inside linf eps 0.3:
    fgsm, pgd, ...; 5 PGD runs of the sweeps, sanity checks and detection; 6 adaptive ...'."""
    threat = report["threat_model"]
    names = report["robust_attacks"]
    suite_name = (report.get("suite") or {}).get("name")
    attacks = report["attacks"]
    listed = [
        n for n in names if n == suite_name or "attacks" in attacks.get(n, {}).get("groups", ())
    ]
    others = [n for n in names if n in attacks and n not in listed]
    adaptive = [n for n in names if n not in attacks and n != suite_name]
    parts = [", ".join(listed)] if listed else []
    if others:
        parts.append(f"{len(others)} PGD runs of the sweeps, sanity checks and detection")
    if adaptive:
        parts.append(f"{len(adaptive)} adaptive detection attack runs")
    text = (
        f"per example over clean and the {len(names)} runs inside {threat['norm']} eps "
        f"{threat['eps']:.4g}: {'; '.join(parts)}"
    )
    outside = [n for n, entry in attacks.items() if not entry["counts_for_robust"]]
    outside_adaptive = [
        run["run"]
        for entry in (report.get("detection") or {}).get("attacks", ())
        for result in entry["detectors"].values()
        for run in result["adaptive_sweep"]
        if run["run"] not in names
    ]
    if outside_adaptive:
        outside.append(f"{len(outside_adaptive)} adaptive detection attack runs")
    if outside:
        text += f"; outside the threat model, not counted: {', '.join(outside)}"
    return text


def detection_lines(report, numbers=False):
    """The detection summary: per detector and attack, the paper-protocol AUC, accuracy and the
    undetected-misclassified rate at 5% FPR; with numbers=True (TensorBoard name, value) pairs."""
    section = report.get("detection")
    if not section:
        return []
    lines, scalars = [], []
    knn = section["knn_accuracy"]
    for entry in section["attacks"]:
        eps = f"{entry['eps']:.4g}"
        for det, result in entry["detectors"].items():
            for kind in ("plain", "adaptive"):
                values = result[kind]
                if values is None:
                    continue
                auc = values["auc_misclassified_vs_correct_all"]
                attack = f"PGD-{entry['steps']}" if kind == "plain" else "adaptive"
                lines.append(
                    f"detection {det:<8} {attack:<9} eps {eps:<7} AUC (paper) "
                    f"{'n/a' if auc is None else f'{auc:.4f}'}  accuracy "
                    f"{values['accuracy']:.4f}  undetected misclassified @5% FPR "
                    f"{values['undetected_misclassified_at_5pct_fpr']:.4f}"
                )
                if auc is not None:
                    scalars.append((f"eval_detection/{det}_{kind}_auc_eps{eps}", auc))
                scalars.append(
                    (
                        f"eval_detection/{det}_{kind}_undetected_eps{eps}",
                        values["undetected_misclassified_at_5pct_fpr"],
                    )
                )
        lines.append(
            f"kNN accuracy (k={knn['k']}) eps {eps:<7} adversarial "
            f"{entry['knn_accuracy_adversarial']:.4f}  clean {knn['clean']:.4f}"
        )
    return scalars if numbers else lines


__all__ = [
    "FIGURES",
    "detection_lines",
    "remove_stale_figures",
    "summary_text",
    "worst_case_coverage",
    "write_figures",
    "write_tensorboard",
]
