"""Figures of a comparison: robust accuracy against training cost, and each entry's detection ROC.

Stdlib + matplotlib (Agg): `bin/compare --collect` draws them without TensorFlow.
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from tf_metric_robust.compare import plan  # noqa: E402

ROBUST_VS_COST = "robust_vs_cost.png"
DETECTION_ROC = "detection_roc.png"


def robust_vs_cost(summary, runs, path):
    """AutoAttack accuracy (PGD where no suite ran) against training wall time: one colour per
    entry, a dot per seed, the mean with its 95% interval as error bars."""
    key = "autoattack_accuracy"
    if not any(r["numbers"].get(key) is not None for r in runs):
        key = "pgd_accuracy"
    if not any(
        r["numbers"].get(key) is not None and r["numbers"].get("train_seconds") is not None
        for r in runs
    ):
        return None
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for index, (entry, row) in enumerate(summary.items()):
        colour = f"C{index % 10}"
        points = [
            (r["numbers"]["train_seconds"], r["numbers"][key])
            for r in runs
            if r["entry"] == entry
            and r["numbers"].get("train_seconds") is not None
            and r["numbers"].get(key) is not None
        ]
        if not points:
            continue
        axes.scatter(
            [p[0] for p in points], [100 * p[1] for p in points], color=colour, alpha=0.35, s=18
        )
        cost, robust = row["metrics"]["train_seconds"], row["metrics"][key]
        axes.errorbar(
            cost["mean"],
            100 * robust["mean"],
            xerr=cost["ci"] or 0,
            yerr=100 * (robust["ci"] or 0),
            color=colour,
            marker="o",
            capsize=3,
            label=f"{entry} (n={robust['n']})",
        )
    axes.set_xlabel("training wall time per run (s)")
    axes.set_ylabel(("AutoAttack" if key == "autoattack_accuracy" else "PGD") + " accuracy (%)")
    axes.set_title("Robust accuracy vs training cost (mean ± 95% CI over seeds)", fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def detection_roc(summary, runs, path):
    """One panel per entry: the detection ROC bin/evaluate drew for its first evaluated seed (the
    paper's protocol, plain and adaptive), titled with the entry's AUC over all its seeds.

    bin/evaluate keeps the curve points in its figure only, so the panels reuse its PNGs.
    """
    panels = []
    for entry, row in summary.items():
        for run in sorted((r for r in runs if r["entry"] == entry), key=lambda r: r["seed"]):
            image = os.path.join(
                os.path.dirname(os.path.join(run["model_dir"], plan.REPORT)), "detection_roc.png"
            )
            if os.path.exists(image):
                panels.append((entry, run["seed"], image, row["metrics"]["detection_auc"]))
                break
    if not panels:
        return None
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.2 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (entry, seed, image, auc) in zip(axes.flat, panels):
        axis.imshow(matplotlib.image.imread(image))
        mean = "–" if auc["mean"] is None else f"{100 * auc['mean']:.1f}"
        spread = "" if auc["ci"] is None else f" ± {100 * auc['ci']:.1f}"
        axis.set_title(f"{entry} (seed {seed}); AUC over seeds {mean}{spread}", fontsize="small")
    figure.suptitle("Detection ROC, the TLA paper's protocol (misclassified = positive)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write(output, summary, runs):
    """Both figures into output; returns the paths written."""
    written = [
        robust_vs_cost(summary, runs, os.path.join(output, ROBUST_VS_COST)),
        detection_roc(summary, runs, os.path.join(output, DETECTION_ROC)),
    ]
    return [path for path in written if path]


__all__ = ["DETECTION_ROC", "ROBUST_VS_COST", "detection_roc", "robust_vs_cost", "write"]
