"""bin/compare: the plan, the statistics, results.json/.md and figures from run folders, HParams,
and a real 2-mode x 2-seed comparison on a tiny budget (resume, --collect)."""

import glob
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from tf_metric_robust.compare import figures, plan, report, run, stats
from tf_metric_robust.config import MODES, CompareConfig, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Statistics ----------------------------------------------------------------------------------


def test_t_quantiles_match_the_table_and_the_normal_limit():
    assert stats.t975(1) == pytest.approx(12.7062, abs=1e-4)
    assert stats.t975(2) == pytest.approx(4.3027, abs=1e-4)
    for df, value in ((40, 2.0211), (60, 2.0003), (120, 1.9799)):  # beyond the table
        assert stats.t975(df) == pytest.approx(value, abs=2e-4)
    assert stats.t975(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        stats.t975(0)


def test_mean_ci_and_paired_difference():
    cell = stats.mean_ci([0.70, 0.74, 0.72])
    assert cell["mean"] == pytest.approx(0.72)
    assert cell["ci"] == pytest.approx(4.3027 * 0.02 / math.sqrt(3), rel=1e-4)
    assert stats.mean_ci([0.5])["ci"] is None and stats.mean_ci([0.5, None])["missing"] == 1
    # Per-seed differences 0.05, 0.06, 0.04: mean 0.05, sd 0.01 -> the interval excludes 0.
    diff = stats.paired_difference({0: 0.80, 1: 0.81, 2: 0.79, 3: 0.9}, {0: 0.75, 1: 0.75, 2: 0.75})
    assert diff["seeds"] == [0, 1, 2] and diff["mean"] == pytest.approx(0.05)
    assert diff["separates"]
    assert not diff["degenerate"]
    noisy = stats.paired_difference({0: 0.80, 1: 0.70}, {0: 0.75, 1: 0.76})
    assert not noisy["separates"] and not noisy["degenerate"]
    # Equal per-seed differences (up to float rounding): width 0, flagged with †, never bold.
    same = stats.paired_difference({0: 0.82, 1: 0.80}, {0: 0.78, 1: 0.76})
    assert same["ci"] == pytest.approx(0.0, abs=1e-12)
    assert not same["separates"] and same["degenerate"]
    zero = stats.paired_difference({0: 0.80, 1: 0.80}, {0: 0.80, 1: 0.80})
    assert not zero["separates"] and not zero["degenerate"]
    single = stats.paired_difference({0: 0.9}, {0: 0.8})
    assert single["ci"] is None and not single["separates"] and not single["degenerate"]
    assert stats.ratio_of_means({0: 300.0, 1: 500.0}, {0: 200.0, 1: 200.0}) == pytest.approx(2.0)


def test_t80_matches_the_table_and_the_normal_limit():
    assert stats.t80(1) == pytest.approx(1.3764, abs=1e-4)
    assert stats.t80(4) == pytest.approx(0.9410, abs=1e-4)
    assert stats.t80(60) == pytest.approx(0.8477, abs=2e-4)  # beyond the table (t tables)
    assert stats.t80(10**6) == pytest.approx(0.841621, abs=1e-4)


def test_mcnemar_exact_against_hand_computed_binomial_tails():
    # b = 5, c = 2: p = 2 (C(7,0) + C(7,1) + C(7,2)) / 2^7 = 2 * 29 / 128.
    test = stats.mcnemar(
        [1] * 5 + [0] * 2 + [1] * 10 + [0] * 3, [0] * 5 + [1] * 2 + [1] * 10 + [0] * 3
    )
    assert (test["n"], test["b"], test["c"]) == (20, 5, 2)
    assert test["p"] == pytest.approx(58 / 128) and test["difference"] == pytest.approx(3 / 20)
    # b = 10, c = 0: p = 2 / 2^10; symmetric in the two models.
    assert stats.mcnemar([1] * 10, [0] * 10)["p"] == pytest.approx(2 / 1024)
    assert stats.mcnemar([0] * 10, [1] * 10)["p"] == pytest.approx(2 / 1024)
    # b = c: p capped at 1; no discordant image: p = 1.
    assert stats.mcnemar([1, 0], [0, 1])["p"] == 1.0 and stats.mcnemar([1, 1], [1, 1])["p"] == 1.0
    with pytest.raises(ValueError, match="same images"):
        stats.mcnemar([1, 0], [1])


def test_mcnemar_agrees_with_scipy_binomtest():
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in ((3, 11), (40, 25), (0, 6), (17, 17)):
        ours = stats.mcnemar([1] * b + [0] * c, [0] * b + [1] * c)["p"]
        assert ours == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_min_detectable_difference_by_hand_and_its_power():
    # k = 5 seeds, sd 0.01: (t(0.975, 4) + t(0.80, 4)) * 0.01 / sqrt(5) = 3.7174 * 0.0044721.
    assert stats.min_detectable_difference(0.01, 5) == pytest.approx(0.016625, abs=2e-6)
    # Adding n = 1000 images with 5% discordant: sqrt(0.01^2 / 5 + 0.05 / 1000) = sqrt(7e-5).
    assert stats.min_detectable_difference(
        0.01, 5, examples=1000, discordant=0.05
    ) == pytest.approx(3.7174 * math.sqrt(7e-5), rel=1e-4)
    with pytest.raises(ValueError, match="2 seeds"):
        stats.min_detectable_difference(0.01, 1)
    # The exact power of the two-sided paired t test at that difference (noncentral t) is 80%
    # within 0.01 from k = 5 seeds on.
    scipy_stats = pytest.importorskip("scipy.stats")
    for k in (5, 10, 30):
        delta = stats.min_detectable_difference(0.02, k)
        df, shift = k - 1, delta * math.sqrt(k) / 0.02
        critical = scipy_stats.t.ppf(0.975, df)
        power = scipy_stats.nct.sf(critical, df, shift) + scipy_stats.nct.cdf(-critical, df, shift)
        assert power == pytest.approx(0.80, abs=0.01), k


def test_paired_tests_pair_seeds_on_the_same_images(tmp_path):
    """bin/compare's per-image tests from report.json per_example: McNemar per seed, the
    detectable difference over seeds, shown in results.md; runs on other images do not pair."""
    labels = [i % 10 for i in range(20)]

    def fake(seed, entry, right):
        model_dir = os.path.join(str(tmp_path), entry, f"seed{seed}")
        _write(os.path.join(model_dir, "recipe.json"), {"mode": entry, "settings": {"seed": seed}})
        result = _fake_report(0.9, sum(right) / 20, 0.5, 0.9, 0.5)
        result["per_example"] = {
            "labels": labels,
            "clean_predictions": labels,
            "predictions": {"pgd": [y if ok else (y + 1) % 10 for y, ok in zip(labels, right)]},
            "suite_fooled_by": ["" if ok else "apgd_ce" for ok in right],
        }
        _write(os.path.join(model_dir, plan.REPORT), result)
        _write(os.path.join(model_dir, plan.RECORD), {"entry": entry, "mode": entry, "seed": seed})

    fake(0, "pgd", [1] * 10 + [0] * 10)
    fake(0, "tla", [1] * 16 + [0] * 4)  # b = 6, c = 0
    fake(1, "pgd", [1] * 10 + [0] * 10)
    fake(1, "tla", [1] * 9 + [0] * 1 + [1] * 3 + [0] * 7)  # b = 3, c = 1
    runs = [report.load_run(d) for d in report.find_runs(str(tmp_path))]
    summary = report.write(str(tmp_path), runs, ["pgd", "tla"], "pgd")
    tests = summary["tla"]["metrics"]["pgd_accuracy"]["paired_tests"]
    assert tests["per_seed"]["0"]["b"] == 6 and tests["per_seed"]["0"]["c"] == 0
    assert tests["per_seed"]["0"]["p"] == pytest.approx(2 / 64)
    assert (tests["per_seed"]["1"]["b"], tests["per_seed"]["1"]["c"]) == (3, 1)
    assert tests["per_seed"]["1"]["p"] == pytest.approx(2 * 5 / 16)
    assert tests["seeds_below_0.05"] == 1
    # Differences 0.30 and 0.10 (sd 0.1414), discordant 6/20 and 4/20 (mean 0.25), n = 20.
    expected = (12.7062 + 1.3764) * math.sqrt(0.1414214**2 / 2 + 0.25 / 20)
    assert tests["min_detectable_difference"] == pytest.approx(expected, rel=1e-4)
    autoattack = summary["tla"]["metrics"]["autoattack_accuracy"]["paired_tests"]
    assert autoattack["per_seed"]["0"]["b"] == 6
    assert summary["tla"]["metrics"]["clean_accuracy"]["paired_tests"]["per_seed"]["0"]["p"] == 1.0
    text = open(os.path.join(str(tmp_path), "results.md")).read()
    assert "| tla | PGD-100 | 0: 6–0 (p 0.031); 1: 3–1 (p 0.62) |" in text
    # Another image set (different labels) is not paired.
    other = dict(runs[3], labels_digest="another")
    assert (
        report.paired_tests(
            {1: (other["correct"]["pgd_accuracy"], other["labels_digest"])},
            {1: (runs[1]["correct"]["pgd_accuracy"], runs[1]["labels_digest"])},
        )
        is None
    )


# Plan ----------------------------------------------------------------------------------------


def _config(**kwargs):
    values = dict(
        output="/tmp/out",
        entries=("pgd", "tla_authors", "trades"),
        seeds=(0, 1),
        train_args=("--train_steps=10",),
    )
    values.update(kwargs)
    return CompareConfig(**values)


def test_plan_orders_runs_and_layers_flags():
    runs = plan.build(_config(mode_flags="trades:--beta=1 --label_smoothing=0.0;tla:--x=1"), MODES)
    assert [r.name for r in runs] == [
        "pgd:0",
        "pgd:1",
        "tla_authors:0",
        "tla_authors:1",
        "trades:0",
        "trades:1",
    ]
    trades = runs[4]
    assert trades.mode == "trades" and trades.model_dir == "/tmp/out/trades/seed0"
    args = list(trades.train_args)
    assert args[:3] == ["--train_steps=10", "--mode=trades", "--seed=0"]
    # Mode default first, the user's override after it (absl keeps the last value).
    assert args.index("--label_smoothing=0") < args.index("--label_smoothing=0.0")
    assert args[-1] == "--model_dir=/tmp/out/trades/seed0"
    authors = runs[2]
    assert authors.mode == "tla" and "--negative_pool=extra" in authors.train_args
    (fast,) = plan.build(_config(entries=("fast_at",), seeds=(3,)), MODES)
    assert fast.mode == "pgd" and "--train_attack=fgsm_rs" in fast.train_args
    assert runs[0].evaluate_args[-1] == "--output=/tmp/out/pgd/seed0/" + plan.REPORT
    assert "--suite=autoattack" in runs[0].evaluate_args
    assert "--detection" in runs[0].evaluate_args


def test_plan_defines_entries_and_selects_with_only():
    config = _config(
        entries=("pgd", "tla_long"),
        mode_flags="tla_long=tla:--train_steps=20",
        only=plan.parse_only(["tla_long:1"]),
    )
    (only,) = plan.build(config, MODES)
    assert only.name == "tla_long:1" and only.mode == "tla"
    assert only.train_args.index("--train_steps=20") > only.train_args.index("--train_steps=10")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(entries=("pgd", "bogus")), "'bogus' is not a mode"),
        (dict(mode_flags="tla"), "is not ENTRY:FLAGS"),
        (dict(mode_flags="x=nomode:--a=1"), "'nomode' is not a mode"),
        (dict(mode_flags="pgd:beta=1"), "is not a --flag=value"),
        (dict(mode_flags="typo:--beta=1"), "neither in --modes"),
        (dict(only=(("pgd", 7),)), "not in --modes x --seeds"),
    ],
)
def test_plan_refuses_bad_values_in_one_line(kwargs, message):
    with pytest.raises(plan.PlanError, match=message):
        plan.build(_config(**kwargs), MODES)


def test_recorded_arguments_match_up_to_how_paths_are_spelled(tmp_path, monkeypatch):
    """A re-run with an absolute --output, from another directory or through a symlink resumes
    instead of evaluating again; any other difference still counts."""
    (tmp_path / "runs").mkdir()
    os.symlink(tmp_path / "runs", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    relative = plan.build(_config(output="runs"), MODES)[0]
    for output in (str(tmp_path / "runs"), "link", str(tmp_path / "link")):
        moved = plan.build(_config(output=output), MODES)[0]
        assert moved.evaluate_args != relative.evaluate_args
        assert plan.same_arguments(list(moved.evaluate_args), relative.evaluate_args)
        assert plan.same_arguments(list(moved.train_args), relative.train_args)
    other = plan.build(_config(output="elsewhere"), MODES)[0]
    assert not plan.same_arguments(list(other.evaluate_args), relative.evaluate_args)
    changed = [*relative.evaluate_args[:-1], "--num_examples=7", relative.evaluate_args[-1]]
    assert not plan.same_arguments(changed, relative.evaluate_args)
    assert not plan.same_arguments(None, relative.evaluate_args)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seeds=(0, 0)), "--seeds repeats 0"),
        (dict(entries=()), "--modes is empty"),
        (dict(parallel=0), "parallel must be in \\[1, inf\\), got 0"),
        (dict(train_args=("--mode=tla",)), "bin/compare sets --mode"),
        (dict(collect=True, only=(("pgd", 0),)), "--collect"),
    ],
)
def test_compare_config_validates_itself(kwargs, message):
    with pytest.raises(UserError, match=message):
        _config(**kwargs)
    with pytest.raises(ValueError, match="not ENTRY:SEED"):
        plan.parse_only(["tla"])


# Results from run folders (synthetic: exact numbers) -----------------------------------------

NUMBERS = {  # entry -> per seed (clean, pgd, autoattack, detection AUC, adaptive TPR, seconds)
    "pgd": [(0.96, 0.78, 0.72, 0.76, 0.10, 200.0), (0.97, 0.80, 0.74, 0.78, 0.12, 220.0)],
    "tla": [(0.97, 0.81, 0.75, 0.80, 0.14, 260.0), (0.97, 0.83, 0.77, 0.82, 0.16, 280.0)],
}


def _write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f)


def _fake_report(clean, pgd, autoattack, auc, tpr, checks=()):
    """The parts of bin/evaluate's report.json that the comparison reads; `checks` are its
    sanity checks (evaluation/sanity.py format)."""
    result = {
        "plain": {"auc_misclassified_vs_correct_all": auc},
        "adaptive": {
            "auc_misclassified_vs_correct_all": auc - 0.05,
            "tpr_at_5pct_fpr": tpr,
            "undetected_misclassified_at_5pct_fpr": 0.2,
        },
    }
    return {
        "clean_accuracy": clean,
        "robust_accuracy": autoattack,
        "attacks": {"pgd": {"accuracy": pgd, "settings": {"steps": 100}}},
        "suite": {"robust_accuracy": autoattack},
        "data": {"num_examples": 200},
        "detection": {"detector": "gaussian", "attacks": [{"detectors": {"gaussian": result}}]},
        "sanity": {"passed": all(c["passed"] is not False for c in checks), "checks": list(checks)},
    }


def _fake_runs(output, with_png=True):
    import matplotlib.pyplot as plt

    for entry, rows in NUMBERS.items():
        for seed, (clean, pgd, autoattack, auc, tpr, seconds) in enumerate(rows):
            model_dir = os.path.join(output, entry, f"seed{seed}")
            _write(
                os.path.join(model_dir, "recipe.json"),
                {
                    "mode": entry,
                    "settings": {
                        "seed": seed,
                        "learning_rate": 0.001,
                        "margin": 0.05 if entry == "tla" else 0.03,
                    },
                },
            )
            _write(
                os.path.join(model_dir, "metrics.json"),
                {"step": 800, "train_seconds_this_run": 1.0},
            )
            _write(
                os.path.join(model_dir, plan.REPORT), _fake_report(clean, pgd, autoattack, auc, tpr)
            )
            _write(
                os.path.join(model_dir, plan.RECORD),
                {"entry": entry, "mode": entry, "seed": seed, "train_seconds": seconds},
            )
            if with_png:
                figure = plt.figure(figsize=(2, 2))
                figure.savefig(os.path.join(model_dir, "compare_evaluation", "detection_roc.png"))
                plt.close(figure)


def test_results_json_md_and_figures_from_run_folders(tmp_path):
    output = str(tmp_path)
    _fake_runs(output)
    runs = [report.load_run(d) for d in report.find_runs(output)]
    assert [(r["entry"], r["seed"]) for r in runs] == [
        ("pgd", 0),
        ("pgd", 1),
        ("tla", 0),
        ("tla", 1),
    ]
    summary = report.write(output, runs, ["pgd", "tla"], "pgd", command="bin/compare ...")
    written = figures.write(output, summary, runs)
    assert sorted(os.path.basename(p) for p in written) == [
        "detection_roc.png",
        "robust_vs_cost.png",
    ]
    results = json.load(open(os.path.join(output, "results.json")))
    assert len(results["runs"]) == 4 and results["evaluated_examples"] == [200]
    tla = results["summary"]["tla"]["metrics"]
    # Two seeds: half-width t(0.975, 1) * sd / sqrt(2) = 12.7062 * |a - b| / 2.
    assert tla["pgd_accuracy"]["n"] == 2
    assert tla["pgd_accuracy"]["mean"] == pytest.approx(0.82)
    assert tla["pgd_accuracy"]["ci"] == pytest.approx(12.7062 * 0.02 / 2, rel=1e-4)
    assert tla["detection_auc"]["difference_to_reference"]["mean"] == pytest.approx(0.04)
    # Both per-seed differences are 0.04: a zero-width interval, flagged and not bold.
    auc_difference = tla["detection_auc"]["difference_to_reference"]
    assert auc_difference["degenerate"] and not auc_difference["separates"]
    assert tla["train_seconds"]["ratio_to_reference"] == pytest.approx(540 / 420)
    text = open(os.path.join(output, "results.md")).read()
    assert "| tla | tla | 0,1 | 97.0 ± 0.0 | 82.0 ± 12.7 | 76.0 ± 12.7 |" in text
    assert "PGD-100" in text and "1.29×" in text and "| +4.0 ± 0.0 † |" in text
    assert "first 200 test examples" in text


def test_missing_evaluation_is_listed_not_averaged(tmp_path):
    output = str(tmp_path)
    _fake_runs(output, with_png=False)
    os.remove(os.path.join(output, "tla", "seed1", plan.REPORT))
    runs = [report.load_run(d) for d in report.find_runs(output)]
    summary = report.write(output, runs, ["pgd", "tla"], "pgd")
    assert summary["tla"]["metrics"]["pgd_accuracy"]["n"] == 1
    assert summary["tla"]["seeds"] == [0]  # nor its wall time: a stopped run's is partial
    assert summary["tla"]["metrics"]["train_seconds"]["values"] == [260.0]
    text = open(os.path.join(output, "results.md")).read()
    assert "Not evaluated (left out of the means): tla:1." in text
    # pgd has two seeds, tla one: the interval sentence stays and says what a bare number is.
    assert "95% confidence interval over seeds" in text
    assert "A number without ± comes from one seed." in text
    assert "| tla | tla | 0 | 97.0 | 81.0 | 75.0 |" in text
    assert figures.detection_roc(summary, runs, str(tmp_path / "roc.png")) is None


def _check(name, passed, detail="", threshold=0.05):
    return {"name": name, "passed": passed, "value": 0.0, "threshold": threshold, "detail": detail}


CLEAN_CHECKS = (
    _check("eps_zero_is_clean", True),
    _check("accuracy_non_increasing_in_eps", None, "skipped: fewer than two eps values"),
    _check("suite_apgd_not_far_below_pgd", True),
)


def test_failed_sanity_checks_mark_the_numbers_they_put_in_doubt(tmp_path):
    """pgd seed 1's report failed suite_apgd_not_far_below_pgd (PGD overstates robustness): its
    PGD numbers carry a marker and a footnote naming the check and the run; tla seed 0 failed a
    gradient-masking check, which puts every attack's number in doubt; the other runs are clean."""
    output = str(tmp_path)
    _fake_runs(output, with_png=False)
    apgd = "robust accuracy 0.7000 after APGD vs 0.8000 under PGD-100"
    failed = {
        ("pgd", 1): _check("suite_apgd_not_far_below_pgd", False, apgd),
        ("tla", 0): _check("input_gradients_nonzero_finite", False, "all-zero CE gradient 9", 0.1),
    }
    for entry, rows in NUMBERS.items():
        for seed, numbers in enumerate(rows):
            check = failed.get((entry, seed))
            checks = [c for c in CLEAN_CHECKS if not check or c["name"] != check["name"]]
            checks += [check] if check else []
            _write(
                os.path.join(output, entry, f"seed{seed}", plan.REPORT),
                _fake_report(*numbers[:5], checks=checks),
            )
    runs = [report.load_run(d) for d in report.find_runs(output)]
    report.write(output, runs, ["pgd", "tla"], "pgd")
    results = json.load(open(os.path.join(output, "results.json")))
    by_run = {(r["entry"], r["seed"]): r["failed_sanity_checks"] for r in results["runs"]}
    assert by_run[("pgd", 0)] == [] and by_run[("tla", 1)] == []  # skipped is not failed
    (pgd_check,) = by_run[("pgd", 1)]
    assert pgd_check["name"] == "suite_apgd_not_far_below_pgd"
    assert pgd_check["detail"] == apgd and pgd_check["metrics"] == ["pgd_accuracy"]
    (tla_check,) = by_run[("tla", 0)]
    assert tla_check["metrics"] == list(report.ATTACKED)
    summary = results["summary"]
    assert [(c["seed"], c["name"]) for c in summary["pgd"]["failed_sanity_checks"]] == [
        (1, "suite_apgd_not_far_below_pgd")
    ]
    assert [(c["seed"], c["name"]) for c in summary["tla"]["failed_sanity_checks"]] == [
        (0, "input_gradients_nonzero_finite")
    ]
    text = open(os.path.join(output, "results.md")).read()
    # Means: pgd's PGD cell (seed 1 in it) is marked, its other numbers are not; tla's attacked
    # numbers carry its own marker, its clean accuracy and wall time do not.
    assert (
        "| pgd | pgd | 0,1 | 96.5 ± 6.4 | 79.0 ± 12.7 ⚠1 | 73.0 ± 12.7 | 77.0 ± 12.7 | "
        "11.0 ± 12.7 | 210 ± 127 |" in text
    )
    assert (
        "| tla | tla | 0,1 | 97.0 ± 0.0 | 82.0 ± 12.7 ⚠2 | 76.0 ± 12.7 ⚠2 | 81.0 ± 12.7 ⚠2 | "
        "15.0 ± 12.7 ⚠2 | 270 ± 127 |" in text
    )
    # Differences to pgd rest on both entries' runs: PGD carries both markers.
    assert (
        "| tla | +0.5 ± 6.4 | +3.0 ± 0.0 † ⚠1 ⚠2 | +3.0 ± 0.0 † ⚠2 | +4.0 ± 0.0 † ⚠2 | "
        "+4.0 ± 0.0 † ⚠2 | 1.29× |" in text
    )
    assert (
        f"- ⚠1 pgd seed 1: `suite_apgd_not_far_below_pgd` failed: {apgd} (threshold 0.05)." in text
    )
    assert "- ⚠2 tla seed 0: `input_gradients_nonzero_finite` failed:" in text
    line = run.summary_line(next(r for r in runs if (r["entry"], r["seed"]) == ("pgd", 1)))
    assert line.endswith("; sanity check FAILED: suite_apgd_not_far_below_pgd")


def test_one_seed_results_md_shows_single_values_not_intervals(tmp_path):
    output = str(tmp_path)
    _fake_runs(output, with_png=False)
    runs = [r for r in (report.load_run(d) for d in report.find_runs(output)) if r["seed"] == 0]
    report.write(output, runs, ["pgd", "tla"], "pgd")
    text = open(os.path.join(output, "results.md")).read()
    assert "One seed per entry: single values, no confidence interval" in text
    assert "confidence interval over seeds" not in text and "95% interval" not in text
    assert "the difference in points on the one seed both ran (a single value, no interval)" in text
    assert "±" not in text
    assert "| tla | tla | 0 | 97.0 | 81.0 | 75.0 | 80.0 | 14.0 | 260 |" in text
    assert "| tla | +1.0 | +3.0 | +3.0 |" in text


def _hparams_summaries(logdir):
    """{plugin content kind: count} of the HParams summaries in logdir's event files."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import metadata

    kinds = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME:
                    kinds[value.tag] = kinds.get(value.tag, 0) + 1
    return kinds


def test_collect_writes_hparams_sessions_and_the_experiment(tmp_path):
    output = str(tmp_path)
    _fake_runs(output, with_png=False)
    config = CompareConfig(output=output, entries=("pgd", "tla"), seeds=(0,), collect=True)
    lines = []
    status = run.compare(config, modes=MODES, bin_dir="/nonexistent", out=_Lines(lines))
    assert status == 0
    results = json.load(open(os.path.join(output, "results.json")))
    assert len(results["runs"]) == 4  # every run found on disk, not only --seeds
    for entry in NUMBERS:
        for seed in (0, 1):
            kinds = _hparams_summaries(os.path.join(output, entry, f"seed{seed}", "tensorboard"))
            assert kinds.get("_hparams_/session_start_info") == 1
    assert "_hparams_/experiment" in _hparams_summaries(output)
    # The experiment lists what varies (margin), not what all runs share (learning_rate).
    from tf_metric_robust.compare import hparams

    every = [hparams.run_hparams(r) for r in results["runs"]]
    assert {v["margin"] for v in every} == {0.03, 0.05}
    # A second --collect writes no second session for the same numbers.
    run.compare(config, modes=MODES, bin_dir="/nonexistent", out=_Lines([]))
    kinds = _hparams_summaries(os.path.join(output, "tla", "seed0", "tensorboard"))
    assert kinds.get("_hparams_/session_start_info") == 1


class _Lines:
    def __init__(self, lines):
        self.lines = lines

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass


def test_interrupt_stops_the_running_child_and_starts_no_new_one(tmp_path):
    """SIGTERM reaches the running bin/train (which checkpoints on it); nothing starts after."""
    import threading
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "train").write_text(
        "import os, signal, sys, time\n"
        "def stop(*_):\n"
        "    open(os.environ['MARK'], 'w').write('sigterm')\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "open(os.environ['MARK'] + '.started', 'w').close()\n"
        "time.sleep(60)\n"
    )
    mark = str(tmp_path / "mark")
    os.environ["MARK"] = mark
    try:
        (first, second) = plan.build(
            CompareConfig(output=str(tmp_path / "out"), entries=("pgd",), seeds=(0, 1)), MODES
        )
        lines = []
        runner = run.Runner(
            [first, second], bin_dir=str(bin_dir), log_dir=str(tmp_path / "logs"), out=_Lines(lines)
        )
        os.makedirs(runner.log_dir)
        worker = threading.Thread(target=runner.one, args=(first,))
        worker.start()
        deadline = time.time() + 60
        while not os.path.exists(mark + ".started") and time.time() < deadline:
            time.sleep(0.05)
        runner.interrupt()
        worker.join(timeout=60)
    finally:
        del os.environ["MARK"]
    assert open(mark).read() == "sigterm"
    assert runner.failed == ["pgd:0"]
    assert runner.one(second) is None and runner.failed == ["pgd:0", "pgd:1"]
    assert "interrupted before bin/train started" in "".join(lines)


# A real comparison: bin/compare -> bin/train and bin/evaluate subprocesses -------------------

TINY_TRAIN = [
    "--flagfile=configs/mnist5k.flags",
    "--train_steps=4",
    "--eval_every=4",
    "--eval_examples=20",
    "--final_eval_examples=20",
    "--steps=1",
    "--step_size=0.3",
    "--eps_warmup_steps=0",
    "--eval_steps=1",
    "--eval_step_size=0.3",
    "--batch_size=20",
    "--eval_batch_size=20",
    "--noexport",
]


def _compare(output, data_dir, *extra):
    command = [
        sys.executable,
        "bin/compare",
        *TINY_TRAIN,
        f"--data_dir={data_dir}",
        "--modes=natural,pgd",
        "--seeds=0,1",
        f"--output={output}",
        "--parallel=2",
        "--evaluate_examples=20",
        f"--evaluate_flags=--data_dir={data_dir} --suite=none --nodetection --steps=1 "
        "--batch_size=20",
        *extra,
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, mnist5k_data_dir):
    output = str(tmp_path_factory.mktemp("compare"))
    first = _compare(output, mnist5k_data_dir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return output, first


@pytest.mark.slow
def test_compare_trains_evaluates_and_reports_every_run(compared):
    output, first = compared
    lines = first.stdout.splitlines()
    finished = [line for line in lines if " seed " in line and "[trained, evaluated]" in line]
    assert len(finished) == 4, first.stdout
    assert sum(line.startswith("[") and "runs" in line for line in lines) == 4  # the bar
    results = json.load(open(os.path.join(output, "results.json")))
    assert len(results["runs"]) == 4
    for entry in ("natural", "pgd"):
        cell = results["summary"][entry]["metrics"]["clean_accuracy"]
        values = [r["numbers"]["clean_accuracy"] for r in results["runs"] if r["entry"] == entry]
        assert cell["n"] == 2 and cell["mean"] == pytest.approx(sum(values) / 2)
        assert cell["ci"] == pytest.approx(
            12.7062 * abs(values[0] - values[1]) / 2, rel=1e-3, abs=1e-9
        )
        assert results["summary"][entry]["metrics"]["train_seconds"]["n"] == 2
    assert all(r["flags"] and r["train_command"] for r in results["runs"])
    assert os.path.exists(os.path.join(output, figures.ROBUST_VS_COST))
    assert "| natural | natural | 0,1 |" in open(os.path.join(output, "results.md")).read()
    for model_dir in glob.glob(os.path.join(output, "*", "seed*")):
        kinds = _hparams_summaries(os.path.join(model_dir, "tensorboard"))
        assert kinds.get("_hparams_/session_start_info") == 1


@pytest.mark.slow
def test_rerun_trains_nothing_and_collect_aggregates_a_moved_folder(
    compared, tmp_path, mnist5k_data_dir
):
    output, _ = compared
    checkpoints = sorted(glob.glob(os.path.join(output, "*", "seed*", "checkpoints", "*")))
    stamps = [os.path.getmtime(p) for p in checkpoints]
    logs = {p: os.path.getsize(p) for p in glob.glob(os.path.join(output, "logs", "*.log"))}
    again = _compare(output, mnist5k_data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("[skipped, skipped]") == 4, again.stdout
    assert [os.path.getmtime(p) for p in checkpoints] == stamps
    assert {p: os.path.getsize(p) for p in logs} == logs  # no subprocess was started
    moved = str(tmp_path / "moved")
    shutil.copytree(output, moved)
    collected = subprocess.run(
        [sys.executable, "bin/compare", "--collect", f"--output={moved}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert collected.returncode == 0, collected.stderr[-3000:]
    results = json.load(open(os.path.join(moved, "results.json")))
    assert sorted((r["entry"], r["seed"]) for r in results["runs"]) == [
        ("natural", 0),
        ("natural", 1),
        ("pgd", 0),
        ("pgd", 1),
    ]
