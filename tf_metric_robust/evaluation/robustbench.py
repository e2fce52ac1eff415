"""An evaluation's AutoAttack result as a RobustBench model_info file (bin/evaluate
--robustbench_json=PATH).

RobustBench (Croce et al., NeurIPS 2021 Datasets and Benchmarks, arXiv 2010.09670) lists each
model by a JSON file, model_info/<dataset>/<threat model>/<model name>.json, whose fields are
those of its `ModelInfo` dataclass (RobustBench/robustbench `robustbench/utils.py:555-573`):
link, name, authors, additional_data, number_forward_passes, dataset, venue, architecture, eps,
clean_acc, reported, autoattack_acc, footnote. Accuracies are percent strings rounded to two
decimals, `str(round(accuracy * 100, 2))` (`utils.py:530,539`: "86.21", "62.5"); eps is written as
the files write it ("8/255", "4/255", "0.5": `model_info/cifar10/Linf/Mao2019Metric.json`,
`model_info/cifar10/L2/*.json`). What an evaluation cannot know (the paper's link, title,
authors, venue and its own reported number) is left as "" for the author to fill in; the
leaderboard shows an empty venue as "Unpublished" (`utils.py:371-372`).

Fields of ours follow RobustBench's, which its leaderboard code ignores (it reads fields by
name): the threat model as RobustBench names it (its folder: "Linf", "L2"), the number of
evaluated examples, the AutoAttack version and members, its reliability warnings, our package
version, and `robust_flags`: per evaluated example, in data order, whether AutoAttack left it
correctly classified (the reference's `robust_flags`, fra31/auto-attack
`autoattack/autoattack.py:125-136,224`).
"""

import fractions
import json
import os

from tf_metric_robust import atomic_io

# RobustBench's ModelInfo fields for an adversarial threat model, in its order
# (robustbench/utils.py:555-573, the corruption fields left out).
MODEL_INFO_FIELDS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "footnote",
)
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}  # our norm -> RobustBench's ThreatModel value


def percent(fraction):
    """An accuracy in [0, 1] as RobustBench writes it: '86.21', '62.5' (utils.py:530)."""
    return str(round(float(fraction) * 100, 2))


def eps_text(eps):
    """eps as RobustBench's files write it: a short decimal as itself ('0.3', '0.5'), else a
    fraction of 255 when it is one ('8/255'), else the decimal."""
    eps = float(eps)
    decimal = repr(eps)
    if len(decimal.split(".")[-1]) <= 4:
        return decimal
    pixels = fractions.Fraction(eps).limit_denominator(255) * 255
    if pixels.denominator == 1 and abs(float(pixels) / 255 - eps) < 1e-12:
        return f"{pixels.numerator}/255"
    return decimal


def architecture(recipe):
    """The run's network: its model name with the builder's arguments, e.g.
    'wide_resnet (depth=28, width=10)'; '' for a SavedModel outside a run."""
    if not recipe:
        return ""
    kwargs = recipe.get("model_kwargs") or {}
    arguments = ", ".join(f"{key}={value}" for key, value in sorted(kwargs.items()))
    return f"{recipe['model']} ({arguments})" if arguments else recipe["model"]


def model_info(report):
    """The RobustBench model_info dict of a bin/evaluate report that ran --suite=autoattack.

    Args:
      report: report.json's dict (report_schema.Report) with a `suite` section.
    Returns:
      MODEL_INFO_FIELDS in RobustBench's order, then threat_model, num_examples,
      autoattack_version, autoattack_attacks, autoattack_warnings, tf_metric_robust_version and
      robust_flags (list of bool, one per evaluated example).
    Raises:
      ValueError: the report has no AutoAttack result.
    """
    suite = report.get("suite")
    if not suite:
        raise ValueError("a RobustBench model_info needs an AutoAttack result: --suite=autoattack")
    recipe = report["model"].get("recipe") or {}
    fooled_by = report["per_example"]["suite_fooled_by"]
    info = dict.fromkeys(MODEL_INFO_FIELDS, "")
    info.update(
        # A run trained on extra (e.g. generated) images records them in recipe.json.
        additional_data=bool(recipe.get("extra_data")),
        number_forward_passes=1,  # one deterministic forward pass per prediction
        dataset=report["data"]["dataset"],
        architecture=architecture(recipe),
        eps=eps_text(suite["eps"]),
        clean_acc=percent(suite["clean_accuracy"]),
        autoattack_acc=percent(suite["robust_accuracy"]),
    )
    info.update(
        threat_model=THREAT_MODELS[suite["norm"]],
        num_examples=len(fooled_by),
        autoattack_version=suite["version"],
        autoattack_attacks=list(suite["attacks"]),
        autoattack_warnings=list(suite["warnings"]),
        tf_metric_robust_version=report["versions"]["tf_metric_robust"],
        robust_flags=[reason == "" for reason in fooled_by],
    )
    return info


def write_model_info(report, path):
    """Writes model_info(report) to `path` as JSON in RobustBench's field order (atomically,
    its folder created); returns the dict."""
    info = model_info(report)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_io.write_text_atomic(path, json.dumps(info, indent=2) + "\n")
    return info


__all__ = ["MODEL_INFO_FIELDS", "THREAT_MODELS", "model_info", "percent", "write_model_info"]
