"""results.md of a comparison: the table of means over seeds, the table of paired differences to
the reference entry, a sentence above each saying what it shows (intervals, or single values with
one seed), and a marker on every number a failed sanity check puts in doubt with a footnote naming
the check, the entry and the seed. Stdlib only.
"""

# (key, column title, percent?) of results.md, in order. Accuracies and rates are fractions in the
# JSON and percent in the table.
METRICS = (
    ("clean_accuracy", "clean", True),
    ("pgd_accuracy", "PGD", True),
    ("autoattack_accuracy", "AutoAttack", True),
    ("detection_auc", "detection AUC", True),
    ("adaptive_tpr_at_5pct_fpr", "adaptive TPR@5%FPR", True),
    ("train_seconds", "training wall time (s)", False),
)


def _cell(cell, percent):
    scale = 100.0 if percent else 1.0
    if cell["mean"] is None:
        return "–"
    digits = 1 if percent else 0
    text = f"{cell['mean'] * scale:.{digits}f}"
    if cell["ci"] is not None:
        text += f" ± {cell['ci'] * scale:.{digits}f}"
    return text


def _relative(cell, percent):
    if "ratio_to_reference" in cell:
        ratio = cell["ratio_to_reference"]
        return "–" if ratio is None else f"{ratio:.2f}×"
    diff = cell.get("difference_to_reference")
    if not diff or diff["mean"] is None:
        return "–"
    scale = 100.0 if percent else 1.0
    text = f"{diff['mean'] * scale:+.1f}"
    if diff["ci"] is not None:
        text += f" ± {diff['ci'] * scale:.1f}"
        if diff["separates"]:
            text = f"**{text}**"
        elif diff.get("degenerate"):
            text += " †"
    return text


def _table(titles, rows):
    """Markdown table lines: the header of `titles`, the rule, one line per row of cells."""
    return [
        "| " + " | ".join(titles) + " |",
        "|" + "---|" * len(titles),
        *("| " + " | ".join(cells) + " |" for cells in rows),
    ]


def _doubts(summary):
    """({(entry, seed, metric): [marker]}, footnote lines): one numbered marker per failed sanity
    check of a summarised run, in table order."""
    marks, notes = {}, []
    for entry, row in summary.items():
        for check in row.get("failed_sanity_checks", []):
            marker = f"⚠{len(notes) + 1}"
            threshold = check["threshold"]
            limit = f"{threshold:g}" if isinstance(threshold, (int, float)) else threshold
            notes.append(
                f"- {marker} {entry} seed {check['seed']}: `{check['name']}` failed: "
                f"{check['detail']} (threshold {limit})."
            )
            for key in check["metrics"]:
                marks.setdefault((entry, check["seed"], key), []).append(marker)
    return marks, notes


def _marked(text, marks, cells):
    """text followed by the markers of the (entry, seed, metric) cells its number rests on."""
    found = sorted({m for cell in cells for m in marks.get(cell, ())}, key=lambda m: int(m[1:]))
    return " ".join([text, *found])


def _means_sentence(summary):
    """What the first table shows: mean ± 95% CI, or single values when no entry has two seeds."""
    cells = [
        cell
        for row in summary.values()
        for cell in row["metrics"].values()
        if cell["mean"] is not None
    ]
    if not any(cell["ci"] is not None for cell in cells):
        return (
            "One seed per entry: single values, no confidence interval (that needs two or more "
            "seeds); accuracies, AUC and TPR in %."
        )
    text = (
        "Mean ± half-width of the 95% confidence interval over seeds (Student t, n - 1 "
        "degrees of freedom); accuracies, AUC and TPR in %."
    )
    if any(cell["ci"] is None for cell in cells):
        text += " A number without ± comes from one seed."
    return text


def _differences_sentence(summary, reference):
    """What the second table shows: paired differences ± interval, or single differences."""
    diffs = [
        row["metrics"][key]["difference_to_reference"]
        for entry, row in summary.items()
        for key, _, _ in METRICS
        if "difference_to_reference" in row["metrics"][key]
        and row["metrics"][key]["difference_to_reference"]["mean"] is not None
    ]
    if not any(diff["ci"] is not None for diff in diffs):
        return (
            f"Relative to `{reference}`: the difference in points on the one seed both ran "
            "(a single value, no interval); training time as the ratio of wall times."
        )
    text = (
        f"Relative to `{reference}`: the difference in points, paired by seed, "
        "± its 95% interval (**bold**: the interval excludes 0; †: every seed gave the "
        "same difference, so the interval has width 0 and cannot say how far another seed "
        "would move it); training time as the ratio of mean wall times."
    )
    if any(diff["ci"] is None for diff in diffs):
        text += " A difference without ± rests on one seed."
    return text


def _paired_lines(summary, reference, titles):
    """The per-image tests: per entry and metric, McNemar's discordant counts and exact p per
    seed, and the smallest difference the design detects at 80% power (report.paired_tests)."""
    rows = []
    for entry, row in summary.items():
        if entry == reference:
            continue
        for (key, _, _), title in zip(METRICS, titles):
            tests = row["metrics"][key].get("paired_tests")
            if not tests:
                continue
            seeds = "; ".join(
                f"{seed}: {t['b']}–{t['c']} (p {t['p']:.2g})"
                for seed, t in tests["per_seed"].items()
            )
            mdd = tests["min_detectable_difference"]
            rows.append([entry, title, seeds, "–" if mdd is None else f"{100 * mdd:.1f}"])
    if not rows:
        return []
    return [
        "",
        f"The same test images, paired per image, against `{reference}` (McNemar's exact test per "
        "seed: images only the entry gets right – images only the reference gets right, and the "
        "two-sided p); the last column is the smallest difference in points this design (these "
        "seeds, their spread, these images) detects with 80% power at two-sided alpha 0.05.",
        "",
        *_table(["entry", "metric", "seed: b–c (p)", "detectable (points)"], rows),
    ]


def markdown(summary, runs, reference, pgd_label="PGD"):
    """results.md: one table of means ± 95% CI, one of the paired differences to the reference,
    a marker on every number a failed sanity check puts in doubt and a footnote naming it."""
    titles = [pgd_label if key == "pgd_accuracy" else title for key, title, _ in METRICS]
    marks, notes = _doubts(summary)

    def mean_cell(entry, row, key, percent):
        cells = [(entry, seed, key) for seed in row["seeds"]]
        return _marked(_cell(row["metrics"][key], percent), marks, cells)

    def relative_cell(entry, row, key, percent):
        cell = row["metrics"][key]
        seeds = cell.get("difference_to_reference", {}).get("seeds", row["seeds"])
        cells = [(name, seed, key) for name in (entry, reference) for seed in seeds]
        return _marked(_relative(cell, percent), marks, cells)

    means = (
        [entry, row["mode"], ",".join(str(s) for s in row["seeds"])]
        + [mean_cell(entry, row, key, percent) for key, _, percent in METRICS]
        for entry, row in summary.items()
    )
    lines = [_means_sentence(summary), "", *_table(["entry", "mode", "seeds", *titles], means)]
    if reference in summary:
        differences = (
            [entry] + [relative_cell(entry, row, key, percent) for key, _, percent in METRICS]
            for entry, row in summary.items()
            if entry != reference
        )
        lines += [
            "",
            _differences_sentence(summary, reference),
            "",
            *_table(["entry", *titles], differences),
            *_paired_lines(summary, reference, titles),
        ]
    if notes:
        lines += [
            "",
            "Failed sanity checks of bin/evaluate (⚠: the evaluation behind that number is "
            "suspect, not the model; details in the run's report.json):",
            "",
            *notes,
        ]
    missing = [f"{r['entry']}:{r['seed']}" for r in runs if not r["evaluated"]]
    if missing:
        lines += ["", f"Not evaluated (left out of the means): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


__all__ = ["METRICS", "markdown"]
