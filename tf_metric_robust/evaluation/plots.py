"""Figures of an evaluation as PNG files: robust accuracy vs eps and vs steps, detection ROC curves.

Uses matplotlib's object-oriented API on an Agg canvas (no pyplot, no display, no global backend
state), so it works on headless machines and inside tests.
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _new_axes(title, xlabel, ylabel):
    figure = Figure(figsize=(5.0, 3.6), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def eps_label(eps):
    """'8/255' when eps is a whole number of 255ths below 0.25 (CIFAR style), else '0.3'."""
    scaled = eps * 255
    if 0 < eps < 0.25 and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{eps:g}"


def plot_accuracy_vs_eps(
    points, path, *, clean_accuracy=None, threat_eps=None, norm="linf", title=None
):
    """Robust accuracy against eps. points: [(eps, accuracy)]; writes a PNG at path."""
    points = sorted(points)
    eps, accuracy = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    figure, axes = _new_axes(
        title or "PGD accuracy vs eps", f"eps ({norm}, images on [0,1])", "accuracy"
    )
    axes.plot(eps, accuracy, marker="o", label="PGD")
    if clean_accuracy is not None:
        axes.axhline(clean_accuracy, color="grey", linestyle="--", label="clean")
    if threat_eps is not None:
        axes.axvline(
            threat_eps,
            color="red",
            alpha=0.4,
            linestyle=":",
            label=f"eval eps {eps_label(threat_eps)}",
        )
    axes.set_xticks(eps)
    axes.set_xticklabels([eps_label(e) for e in eps], rotation=45 if len(eps) > 6 else 0)
    axes.set_ylim(-0.02, 1.02)
    axes.legend(loc="best", fontsize="small")
    return _save(figure, path)


def plot_accuracy_vs_steps(points, path, *, clean_accuracy=None, title=None):
    """Robust accuracy against the number of PGD steps. points: [(steps, accuracy)]."""
    points = sorted(points)
    steps, accuracy = [p[0] for p in points], [p[1] for p in points]
    figure, axes = _new_axes(title or "PGD accuracy vs steps", "steps", "accuracy")
    axes.plot(steps, accuracy, marker="o", label="PGD")
    if clean_accuracy is not None:
        axes.axhline(clean_accuracy, color="grey", linestyle="--", label="clean")
    if len(steps) > 1 and steps[-1] / max(steps[0], 1) >= 20:
        axes.set_xscale("log")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(loc="best", fontsize="small")
    return _save(figure, path)


def plot_roc(curves, path, *, title=None):
    """ROC curves. curves: label -> (fpr [K], tpr [K], auc or None); writes a PNG at path.

    The default title names the TLA paper's protocol (Fig. 5), which detection_protocol plots."""
    figure, axes = _new_axes(
        title or "Detection ROC: clean + adversarial, misclassified = positive",
        "false positive rate",
        "true positive rate",
    )
    axes.title.set_fontsize("small")
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
    for label, (fpr, tpr, auc) in curves.items():
        name = label if auc is None else f"{label} (AUC {auc:.3f})"
        axes.plot(fpr, tpr, label=name)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.legend(loc="lower right", fontsize="small")
    return _save(figure, path)
