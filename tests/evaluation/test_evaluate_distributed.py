"""bin/evaluate on 2 replicas and on 2 workers gives the single-device report.

Every attack runs shard by shard (shards.py): a shard's random draws are keyed on its index, not
on a replica or worker, so the per-example results, accuracies, AutoAttack sequence, sanity
checks and detection numbers must be exactly equal however the shards are spread. The workers
are two bin/evaluate processes with TF_CONFIG on 127.0.0.1 (as tests/test_distribute.py trains);
one is killed mid-run, the other must fail with a message, and running both again must resume
from the shards written and finish with the single-process report.
"""

import glob
import json
import os
import time

import numpy as np
import pytest

import support
from tf_metric_robust import distribute
from tf_metric_robust.config import EvalConfig
from tf_metric_robust.evaluation.evaluate import evaluate

pytestmark = pytest.mark.slow  # end to end: bin/ subprocesses or full runs (make test-fast skips)

PORTS = (12345, 12346)  # TF_CONFIG's addresses; never bound (workers exchange files, not gRPC)
# Small but not trivial: every attack family of the suite, the sweeps, sanity checks, detection.
CONFIG = EvalConfig(
    eps=0.1,
    step_size=0.05,
    steps=2,
    attacks=("fgsm", "pgd", "adaptive_detector"),
    eps_sweep=(),
    steps_sweep=(1, 2),
    suite="autoattack",
    suite_steps=2,
    suite_queries=20,
    detection=True,
    detection_steps=2,
    detection_weights=(1.0,),
    detection_reference=300,
    detection_k=10,
)
FLAGS = [
    "--num_examples=30",
    "--batch_size=8",
    "--attacks=fgsm,pgd",
    "--eps=0.1",
    "--step_size=0.05",
    "--steps=2",
    "--eps_sweep=0,0.1",
    "--steps_sweep=1,2",
    "--suite=autoattack",
    "--suite_steps=2",
    "--suite_queries=20",
    "--noprogress",
    "--notensorboard",
]


def _assert_same_results(one, other):
    assert one["per_example"] == other["per_example"]
    for key in ("clean_accuracy", "robust_accuracy", "robust_attacks", "suite", "detection"):
        if key == "suite" and one[key] is not None:
            for field in ("attack_accuracy", "robust_accuracy", "fooled_by", "warnings"):
                assert one[key][field] == other[key][field], field
        elif key != "suite":
            assert one[key] == other[key], key
    assert {n: e["accuracy"] for n, e in one["attacks"].items()} == {
        n: e["accuracy"] for n, e in other["attacks"].items()
    }
    assert one["sweeps"] == other["sweeps"]
    assert one["sanity"] == other["sanity"]


def test_two_replicas_give_the_single_device_report(trained_small_cnn, mnist5k_arrays):
    network, x, y = trained_small_cnn
    images, labels = mnist5k_arrays
    reference = images[1::16], labels[1::16]  # 313 training digits, every class
    kwargs = dict(batch_size=8, reference=reference)
    one = evaluate(network, (x[:30], y[:30]), CONFIG, **kwargs).report
    two = evaluate(
        network,
        (x[:30], y[:30]),
        CONFIG,
        **kwargs,
        strategy=distribute.mirrored_strategy(["/cpu:0", "/cpu:1"]),
    ).report
    assert one["distribution"]["replicas"] == 1 and two["distribution"]["replicas"] == 2
    _assert_same_results(one, two)
    # Not a trivial agreement: the attacks find something and the suite adds to the plan.
    assert 0 < one["robust_accuracy"] < one["clean_accuracy"]
    assert one["detection"]["attacks"][0]["detectors"]["gaussian"]["adaptive"] is not None


def _evaluate(model_dir, data_dir, output, worker=None, timeout="120"):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    args = [f"--model_dir={model_dir}", f"--data_dir={data_dir}", f"--output={output}", *FLAGS]
    if worker is not None:
        env["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": [f"127.0.0.1:{port}" for port in PORTS]},
                "task": {"type": "worker", "index": worker},
            }
        )
        args += ["--strategy=multi_worker", f"--worker_timeout={timeout}"]
    return support.start("bin/evaluate", *args, env=env)


def _finish(process, timeout=900):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def test_two_workers_resume_after_a_lost_worker_and_match_one_process(
    trained_small_cnn, mnist5k_data_dir, tmp_path
):
    network, _, _ = trained_small_cnn
    model_dir = str(tmp_path / "run")
    support.write_run_folder(model_dir, network, step=150)
    single_report = str(tmp_path / "single" / "report.json")
    multi_report = str(tmp_path / "multi" / "report.json")
    single = _evaluate(model_dir, mnist5k_data_dir, single_report)

    # Worker 1 is killed as soon as it has written a shard; worker 0 must give up on it.
    workers = [
        _evaluate(model_dir, mnist5k_data_dir, multi_report, w, timeout="8") for w in range(2)
    ]
    deadline = time.time() + 600
    while not glob.glob(str(tmp_path / "multi" / ".work-*" / "*" / "00000[13579].npz")):
        assert workers[1].poll() is None and time.time() < deadline, _finish(workers[1])[2]
        time.sleep(0.2)
    workers[1].kill()
    code, _, stderr = _finish(workers[0])
    _finish(workers[1])
    assert code != 0 and "worker 1 of 2 stopped" in stderr and "resume" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr and not os.path.exists(multi_report)

    # Both again: they resume from the shards written and finish.
    workers = [_evaluate(model_dir, mnist5k_data_dir, multi_report, w) for w in range(2)]
    results = [_finish(process) for process in workers + [single]]
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    with open(single_report) as f, open(multi_report) as g:
        one, multi = json.load(f), json.load(g)
    assert multi["distribution"]["workers"] == 2 and multi["distribution"]["resumed_shards"] > 0
    _assert_same_results(one, multi)
    assert 0 < one["robust_accuracy"] < one["clean_accuracy"]
    assert one["suite"]["fooled_by"]["apgd_ce"] + one["suite"]["fooled_by"]["apgd_t"] > 0
    # The chief wrote the report; the work directory is gone once every worker was done.
    assert not glob.glob(str(tmp_path / "multi" / ".work-*"))
    assert os.path.exists(tmp_path / "multi" / "accuracy_vs_eps.png")
    assert np.mean(one["per_example"]["robust"]) == one["robust_accuracy"]
