"""Results of a comparison: each finished run's numbers -> results.json, and results.md (table.py).

A run's numbers come from three files of its model_dir: the shared evaluation's report.json
(bin/evaluate: clean, PGD, AutoAttack, worst case, the paper's detection AUC and the adaptive
detector attack), metrics.json and recipe.json (bin/train), and compare_run.json (wall times and
commands, run.py). Every sanity check the report failed (evaluation/sanity.py, suite.py) is
carried along: per run and per entry in results.json, as a footnoted marker on the numbers it puts
in doubt in results.md. Stdlib only: `bin/compare --collect` needs no TensorFlow.
"""

import glob
import hashlib
import json
import os
import statistics
import time

from tf_metric_robust import atomic_io
from tf_metric_robust.compare import plan, stats, table
from tf_metric_robust.compare.table import METRICS

# The columns of METRICS that an attack produced: a failed sanity check of bin/evaluate means the
# evaluation, not the model, is suspect (Carlini et al. 2019), so by default it puts all of them in
# doubt (eps = 0 not clean, adversarial examples outside the eps-ball, zero input gradients, an
# unbounded attack that does not break the model, Square beating the gradient attacks).
ATTACKED = ("pgd_accuracy", "autoattack_accuracy", "detection_auc", "adaptive_tpr_at_5pct_fpr")
# Checks about the PGD runs alone (the eps and steps sweeps and the random vs zero start are PGD;
# APGD far below PGD means PGD overstates robustness, AutoAttack's own number stands).
DOUBTS = {
    "accuracy_non_increasing_in_eps": ("pgd_accuracy",),
    "accuracy_non_increasing_in_steps": ("pgd_accuracy",),
    "random_vs_zero_start_gap": ("pgd_accuracy",),
    "suite_apgd_not_far_below_pgd": ("pgd_accuracy",),
}


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _get(tree, *keys):
    for key in keys:
        if not isinstance(tree, (dict, list)):
            return None
        try:
            tree = tree[key]
        except (KeyError, IndexError, TypeError):
            return None
    return tree


def evaluation_numbers(report):
    """report.json of bin/evaluate -> {metric: fraction or None} and the PGD attack's label."""
    numbers = {
        "clean_accuracy": _get(report, "clean_accuracy"),
        "pgd_accuracy": _get(report, "attacks", "pgd", "accuracy"),
        "autoattack_accuracy": _get(report, "suite", "robust_accuracy"),
        "robust_accuracy": _get(report, "robust_accuracy"),
        "evaluated_examples": _get(report, "data", "num_examples"),
    }
    detector = _get(report, "detection", "detector")
    result = _get(report, "detection", "attacks", 0, "detectors", detector) or {}
    numbers["detection_auc"] = _get(result, "plain", "auc_misclassified_vs_correct_all")
    numbers["adaptive_detection_auc"] = _get(result, "adaptive", "auc_misclassified_vs_correct_all")
    numbers["adaptive_tpr_at_5pct_fpr"] = _get(result, "adaptive", "tpr_at_5pct_fpr")
    numbers["adaptive_undetected_at_5pct_fpr"] = _get(
        result, "adaptive", "undetected_misclassified_at_5pct_fpr"
    )
    steps = _get(report, "attacks", "pgd", "settings", "steps")
    return numbers, (f"PGD-{steps}" if steps else "PGD"), detector


# Metrics whose per-example correctness report.json holds (per_example): McNemar's test pairs two
# entries' runs of one seed image by image.
PAIRED = ("clean_accuracy", "pgd_accuracy", "autoattack_accuracy")


def per_example_correct(report):
    """{metric of PAIRED: '0110...' (per test image, 1 = correct)} and a digest of the labels
    (two runs pair only on the same images in the same order); ({}, None) without per_example."""
    labels = _get(report, "per_example", "labels")
    if not isinstance(labels, list):
        return {}, None
    columns = {
        "clean_accuracy": _get(report, "per_example", "clean_predictions"),
        "pgd_accuracy": _get(report, "per_example", "predictions", "pgd"),
    }
    correct = {
        key: "".join("1" if p == label else "0" for p, label in zip(predictions, labels))
        for key, predictions in columns.items()
        if isinstance(predictions, list) and len(predictions) == len(labels)
    }
    fooled_by = _get(report, "per_example", "suite_fooled_by")  # '' = still correct
    if isinstance(fooled_by, list) and len(fooled_by) == len(labels):
        correct["autoattack_accuracy"] = "".join("0" if f else "1" for f in fooled_by)
    digest = hashlib.sha256(json.dumps(labels).encode()).hexdigest()[:16]
    return correct, digest


def paired_tests(ours, theirs):
    """McNemar per seed both entries ran on the same images, and the smallest difference the
    design detects (stats.min_detectable_difference: the per-seed differences' sd, k seeds, n
    images, the mean discordant fraction). ours, theirs: {seed: (correct string, labels digest)}
    of one metric. None when no seed pairs."""
    per_seed = {}
    for seed in sorted(set(ours) & set(theirs)):
        (a, digest_a), (b, digest_b) = ours[seed], theirs[seed]
        if a and b and digest_a == digest_b:
            per_seed[seed] = stats.mcnemar([c == "1" for c in a], [c == "1" for c in b])
    if not per_seed:
        return None
    tests = list(per_seed.values())
    differences = [t["difference"] for t in tests]
    result = {
        "per_seed": {str(seed): test for seed, test in per_seed.items()},
        "seeds_below_0.05": sum(t["p"] < 0.05 for t in tests),
        "min_detectable_difference": None,
    }
    if len(tests) >= 2:
        n = tests[0]["n"]
        result["min_detectable_difference"] = stats.min_detectable_difference(
            statistics.stdev(differences),
            len(tests),
            examples=n,
            discordant=statistics.fmean((t["b"] + t["c"]) / n for t in tests),
        )
    return result


def failed_checks(report):
    """The sanity checks report.json records as failed ('passed' False; None is skipped), each
    with 'metrics': the METRICS keys it puts in doubt (DOUBTS, else every ATTACKED one)."""
    checks = _get(report, "sanity", "checks") or []
    return [
        {
            "name": check.get("name"),
            "detail": check.get("detail"),
            "value": check.get("value"),
            "threshold": check.get("threshold"),
            "metrics": list(DOUBTS.get(check.get("name"), ATTACKED)),
        }
        for check in checks
        if isinstance(check, dict) and check.get("passed") is False
    ]


def load_run(model_dir, entry=None):
    """One run's record for results.json (numbers None where a file is missing)."""
    record = _read_json(os.path.join(model_dir, plan.RECORD)) or {}
    recipe = _read_json(os.path.join(model_dir, "recipe.json")) or {}
    metrics = _read_json(os.path.join(model_dir, "metrics.json"))
    report = _read_json(os.path.join(model_dir, plan.REPORT))
    numbers, pgd_label, detector = evaluation_numbers(report or {})
    correct, labels_digest = per_example_correct(report or {})
    train_seconds = record.get("train_seconds")
    if train_seconds is None and metrics:  # trained outside bin/compare
        train_seconds = metrics.get("train_seconds_this_run")
    numbers["train_seconds"] = train_seconds
    numbers["evaluate_seconds"] = record.get("evaluate_seconds")
    seed = record.get("seed", _get(recipe, "settings", "seed"))
    try:
        with open(os.path.join(model_dir, "flags.txt")) as f:
            flags_text = f.read().splitlines()
    except OSError:
        flags_text = None
    return {
        "entry": entry or record.get("entry") or os.path.basename(os.path.dirname(model_dir)),
        "mode": record.get("mode", recipe.get("mode")),
        "seed": seed,
        "model_dir": model_dir,
        "trained": metrics is not None,
        "evaluated": report is not None,
        "numbers": numbers,
        "failed_sanity_checks": failed_checks(report or {}),
        "correct": correct,
        "labels_digest": labels_digest,
        "pgd_label": pgd_label,
        "detector": detector,
        "train_metrics": metrics,
        "train_seconds_source": record.get(
            "train_seconds_source",
            "bin/compare wall clock"
            if "train_seconds" in record
            else "metrics.json train_seconds_this_run",
        ),
        "train_command": record.get("train_args"),
        "evaluate_command": record.get("evaluate_args"),
        "flags": flags_text,
    }


def find_runs(output):
    """Model dirs under output laid out as bin/compare does: <output>/<entry>/seed<k>/."""
    found = []
    for path in sorted(glob.glob(os.path.join(output, "*", "seed*"))):
        if os.path.exists(os.path.join(path, "recipe.json")):
            found.append(path)
    return found


def summarize(runs, entries, reference):
    """Per entry: mean_ci of every metric, and the paired difference to the reference entry.

    Only evaluated runs count (a run stopped mid-training has a partial wall time and no
    numbers); entries without one are left out (results.md lists their runs as not evaluated).
    """
    by_entry = {
        entry: [r for r in runs if r["entry"] == entry and r["evaluated"]] for entry in entries
    }
    by_entry = {entry: entry_runs for entry, entry_runs in by_entry.items() if entry_runs}
    per_seed = {
        entry: {
            key: {r["seed"]: r["numbers"].get(key) for r in entry_runs} for key, _, _ in METRICS
        }
        for entry, entry_runs in by_entry.items()
    }
    summary = {}
    for entry, entry_runs in by_entry.items():
        row = {
            "mode": entry_runs[0]["mode"] if entry_runs else None,
            "seeds": sorted(r["seed"] for r in entry_runs),
            "metrics": {},
            "failed_sanity_checks": [
                {"seed": r["seed"], **check}
                for r in sorted(entry_runs, key=lambda r: r["seed"])
                for check in r.get("failed_sanity_checks", [])
            ],
        }
        for key, _, _ in METRICS:
            cell = stats.mean_ci([r["numbers"].get(key) for r in entry_runs])
            if reference in per_seed and entry != reference:
                ours, theirs = per_seed[entry][key], per_seed[reference][key]
                if key == "train_seconds":
                    cell["ratio_to_reference"] = stats.ratio_of_means(ours, theirs)
                else:
                    cell["difference_to_reference"] = stats.paired_difference(ours, theirs)
                if key in PAIRED:
                    cell["paired_tests"] = paired_tests(
                        *(
                            {
                                r["seed"]: (r.get("correct", {}).get(key), r.get("labels_digest"))
                                for r in by_entry[name]
                            }
                            for name in (entry, reference)
                        )
                    )
            row["metrics"][key] = cell
        summary[entry] = row
    return summary


def write(output, runs, entries, reference, command=None):
    """results.json and results.md in output; returns the summary."""
    summary = summarize(runs, entries, reference)
    labels = sorted({r["pgd_label"] for r in runs if r["evaluated"]}) or ["PGD"]
    examples = sorted(
        {r["numbers"].get("evaluated_examples") for r in runs if r["evaluated"]} - {None}
    )
    results = {
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "reference": reference,
        "entries": list(entries),
        "pgd_attack": labels,
        "evaluated_examples": examples,
        "confidence": "95% Student t over seeds; differences paired by seed; McNemar's exact "
        "test per seed on the same test images; smallest detectable difference at 80% power, "
        "two-sided alpha 0.05",
        "summary": summary,
        "runs": runs,
    }
    atomic_io.write_json_atomic(os.path.join(output, "results.json"), results)
    text = table.markdown(summary, runs, reference, pgd_label="/".join(labels))
    if examples:
        text += (
            f"\nEvaluated on the first {'/'.join(str(e) for e in examples)} test "
            "examples (bin/evaluate, the same for every run).\n"
        )
    with open(os.path.join(output, "results.md"), "w") as f:
        f.write(text)
    return summary


__all__ = [
    "ATTACKED",
    "PAIRED",
    "DOUBTS",
    "evaluation_numbers",
    "failed_checks",
    "paired_tests",
    "per_example_correct",
    "find_runs",
    "load_run",
    "summarize",
    "write",
]
