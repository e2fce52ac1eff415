"""plots.py writes PNG files headless (Agg canvas) and labels eps in 255ths where natural."""

import numpy as np

from tf_metric_robust.evaluation import plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_eps_label():
    assert plots.eps_label(8 / 255) == "8/255"
    assert plots.eps_label(0.3) == "0.3"
    assert plots.eps_label(0.0) == "0"


def test_figures_are_pngs(tmp_path):
    paths = [
        plots.plot_accuracy_vs_eps(
            [(e / 255, 1 - e / 20) for e in (0, 2, 4, 8, 16)],
            str(tmp_path / "eps.png"),
            clean_accuracy=1.0,
            threat_eps=8 / 255,
        ),
        plots.plot_accuracy_vs_steps(
            [(1, 0.6), (10, 0.5), (100, 0.45)], str(tmp_path / "steps.png"), clean_accuracy=0.9
        ),
        plots.plot_roc(
            {
                "eps 0.3": (np.array([0, 0.2, 1]), np.array([0, 0.7, 1]), 0.75),
                "no auc": (np.array([0, 1]), np.array([0, 1]), None),
            },
            str(tmp_path / "roc.png"),
        ),
    ]
    for path in paths:
        with open(path, "rb") as f:
            content = f.read()
        assert content.startswith(PNG) and len(content) > 5000
