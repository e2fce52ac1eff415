"""bin/evaluate --robustbench_json (evaluation/robustbench.py): the AutoAttack result as a
RobustBench model_info file. Field names and order as RobustBench's ModelInfo
(robustbench/utils.py:555-573), numbers written as its files write them, the run's facts
(architecture, extra data, examples, version) and the per-example robust flags; end to end on a
small CNN."""

import json
import os

import pytest

import support
from tf_metric_robust import __version__
from tf_metric_robust.config import EvaluateRun, EvalConfig, UserError
from tf_metric_robust.evaluation import robustbench

# RobustBench's ModelInfo fields, in its order (corruption fields left out).
MODEL_INFO = (
    "link name authors additional_data number_forward_passes dataset venue architecture eps "
    "clean_acc reported autoattack_acc footnote"
).split()


@pytest.mark.parametrize(
    "fraction, text",
    [(0.8621, "86.21"), (0.625, "62.5"), (0.4741, "47.41"), (1.0, "100.0"), (0.0, "0.0")],
)
def test_accuracies_are_percent_strings_as_robustbench_writes_them(fraction, text):
    """str(round(accuracy * 100, 2)) (robustbench/utils.py:530,539): Mao2019Metric's 86.21,
    Carmon2019Unlabeled's reported 62.5."""
    assert robustbench.percent(fraction) == text


@pytest.mark.parametrize(
    "eps, text",
    [(8 / 255, "8/255"), (4 / 255, "4/255"), (0.5, "0.5"), (0.3, "0.3"), (0.031, "0.031")],
)
def test_eps_is_written_as_the_model_info_files_write_it(eps, text):
    """'8/255' (cifar10/Linf), '4/255' (imagenet/Linf), '0.5' (cifar10/L2), '0.031' (some
    cifar10/Linf entries); MNIST's 0.3 stays a decimal."""
    assert robustbench.eps_text(eps) == text


def _report(*, fooled_by, recipe, norm="linf", eps=8 / 255):
    """The parts of a bin/evaluate report that model_info reads."""
    robust = sum(reason == "" for reason in fooled_by) / len(fooled_by)
    clean = sum(reason != "clean" for reason in fooled_by) / len(fooled_by)
    return {
        "versions": {"tf_metric_robust": __version__},
        "model": {"recipe": recipe},
        "data": {"dataset": "cifar10", "num_examples": len(fooled_by)},
        "suite": {
            "version": "standard",
            "eps": eps,
            "norm": norm,
            "attacks": ["apgd_ce", "apgd_t", "fab_t", "square"],
            "clean_accuracy": clean,
            "robust_accuracy": robust,
            "warnings": ["square beat the gradient attacks: ..."],
        },
        "per_example": {"suite_fooled_by": fooled_by},
    }


def test_model_info_fields_from_the_evaluation_and_the_run():
    fooled_by = ["", "clean", "apgd_ce", "", "square", "", "", "fab_t"]
    recipe = {"model": "wide_resnet", "model_kwargs": {"width": 10, "depth": 28}}
    info = robustbench.model_info(
        _report(fooled_by=fooled_by, recipe=dict(recipe, extra_data=["edm_20m.npz"]))
    )
    assert list(info)[: len(MODEL_INFO)] == MODEL_INFO
    assert info["clean_acc"] == "87.5" and info["autoattack_acc"] == "50.0"
    assert info["eps"] == "8/255" and info["dataset"] == "cifar10"
    assert info["architecture"] == "wide_resnet (depth=28, width=10)"
    assert info["additional_data"] is True and info["number_forward_passes"] == 1
    assert info["robust_flags"] == [True, False, False, True, False, True, True, False]
    assert info["num_examples"] == 8 and info["threat_model"] == "Linf"
    assert info["autoattack_version"] == "standard"
    assert info["autoattack_warnings"] == ["square beat the gradient attacks: ..."]
    assert info["tf_metric_robust_version"] == __version__
    # What the evaluation cannot know stays empty for the author; '' is RobustBench's
    # "Unpublished" venue (utils.py:371-372).
    assert all(info[k] == "" for k in ("link", "name", "authors", "venue", "reported"))
    # No extra_data in recipe.json (runs before that setting), or an empty one: no extra data.
    for plain in (recipe, dict(recipe, extra_data=[]), dict(recipe, extra_data=None)):
        assert (
            robustbench.model_info(_report(fooled_by=fooled_by, recipe=plain))["additional_data"]
            is False
        )
    l2 = robustbench.model_info(_report(fooled_by=fooled_by, recipe=None, norm="l2", eps=0.5))
    assert (l2["threat_model"], l2["eps"], l2["architecture"]) == ("L2", "0.5", "")


def test_no_autoattack_result_no_model_info(tmp_path):
    report = _report(fooled_by=[""], recipe=None)
    report["suite"] = None
    with pytest.raises(ValueError, match="--suite=autoattack"):
        robustbench.write_model_info(report, str(tmp_path / "info.json"))
    assert not os.path.exists(tmp_path / "info.json")


def test_the_setting_needs_the_autoattack_suite():
    with pytest.raises(UserError, match="--robustbench_json needs --suite=autoattack"):
        EvaluateRun(model_dir="run", robustbench_json="info.json")
    request = EvaluateRun(
        model_dir="run", robustbench_json="info.json", config=EvalConfig(suite="autoattack")
    )
    assert request.robustbench_json == "info.json"


@pytest.mark.slow  # a bin/evaluate subprocess
def test_bin_evaluate_writes_the_model_info_of_its_report(
    trained_small_cnn, tmp_path, mnist5k_data_dir
):
    model_dir = str(tmp_path / "run")
    recipe = {"dataset": "mnist5k", "model": "small_cnn", "model_kwargs": {}}
    support.write_run_folder(model_dir, trained_small_cnn[0], step=150, recipe=recipe)
    path = str(tmp_path / "model_info" / "mnist5k" / "Linf" / "ours.json")
    result = support.run(
        "bin/evaluate",
        f"--model_dir={model_dir}",
        f"--data_dir={mnist5k_data_dir}",
        "--num_examples=20",
        "--batch_size=20",
        "--attacks=pgd",
        "--eps=0.15",
        "--step_size=0.05",
        "--steps=2",
        "--eps_sweep=",
        "--steps_sweep=",
        "--suite=autoattack",
        "--suite_steps=3",
        "--suite_queries=30",
        f"--output={tmp_path / 'report.json'}",
        f"--robustbench_json={path}",
        "--noprogress",
        "--notensorboard",
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"robustbench model_info: {path}" in result.stdout
    with open(path) as f:
        text = f.read()
    info = json.loads(text)
    with open(tmp_path / "report.json") as f:
        report = json.load(f)
    assert report["outputs"]["robustbench_json"] == path
    assert list(info)[: len(MODEL_INFO)] == MODEL_INFO  # written in RobustBench's order
    suite = report["suite"]
    assert info["clean_acc"] == str(round(suite["clean_accuracy"] * 100, 2))
    assert info["autoattack_acc"] == str(round(suite["robust_accuracy"] * 100, 2))
    assert (info["eps"], info["threat_model"], info["dataset"]) == ("0.15", "Linf", "mnist5k")
    assert (info["architecture"], info["additional_data"]) == ("small_cnn", False)
    assert info["num_examples"] == 20
    flags = info["robust_flags"]
    assert flags == [reason == "" for reason in report["per_example"]["suite_fooled_by"]]
    assert sum(flags) / 20 == suite["robust_accuracy"]
    assert 0 < sum(flags) < 20  # eps 0.15 leaves both kinds
    # The evaluation's worst case includes AutoAttack: robust there means robust here.
    assert all(flag for flag, robust in zip(flags, report["per_example"]["robust"]) if robust)
