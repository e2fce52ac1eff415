"""bin/train end to end on the real mnist5k digits: outputs, resume, finished runs, SavedModel."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--flagfile=configs/mnist5k.flags", "--eval_examples=50", "--final_eval_examples=100",
        "--steps=2", "--step_size=0.15", "--eval_steps=3", "--eval_step_size=0.1",
        "--batch_size=32", "--eval_batch_size=50"]


def _train(model_dir, data_dir, *extra):
    command = [sys.executable, "bin/train", f"--model_dir={model_dir}", f"--data_dir={data_dir}",
               *TINY, *extra]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return result


def _step(model_dir):
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, mnist5k_data_dir):
    """A TLA run stopped after 6 of 12 steps, then resumed to the end with the same command."""
    model_dir = str(tmp_path_factory.mktemp("run"))
    first = _train(model_dir, mnist5k_data_dir, "--train_steps=6", "--eval_every=3", "--noexport")
    assert first.returncode == 0, first.stderr[-3000:]
    steps_after_first = _step(model_dir)
    second = _train(model_dir, mnist5k_data_dir, "--train_steps=12", "--eval_every=3")
    assert second.returncode == 0, second.stderr[-3000:]
    return model_dir, steps_after_first, first, second


def test_run_writes_the_contract_outputs(finished_run):
    model_dir, _, _, _ = finished_run
    for name in ("checkpoints", "tensorboard", "saved_model", "flags.txt", "metrics.json",
                 "recipe.json"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["step"] == 12
    assert 0.0 <= metrics["eval/pgd_accuracy"] <= metrics["eval/clean_accuracy"] <= 1.0
    # Accuracies average every example asked for (--eval_examples=50, --final_eval_examples=100)
    # and say how many they average.
    second = finished_run[3]
    assert metrics["num_examples"] == 100
    assert "(50 examples)" in second.stdout and "evaluation scored" not in second.stderr
    flags_text = open(os.path.join(model_dir, "flags.txt")).read()
    assert "--mode=tla" in flags_text and "--lambda_triplet=0.5" in flags_text
    events = [f for _, _, files in os.walk(os.path.join(model_dir, "tensorboard"))
              for f in files if f.startswith("events.out")]
    assert events
    assert os.path.exists(os.path.join(model_dir, "tensorboard", "projector",
                                       "projector_config.pbtxt"))


def test_resume_continues_at_the_last_checkpoint(finished_run):
    model_dir, steps_after_first, _, second = finished_run
    assert steps_after_first == 6
    assert "Resumed from" in second.stdout and "ckpt-6" in second.stdout
    assert "Steps 7-9 of 12" in second.stdout
    assert _step(model_dir) == 12


def test_finished_run_says_so_and_exits_zero(finished_run, mnist5k_data_dir):
    model_dir, _, _, _ = finished_run
    again = _train(model_dir, mnist5k_data_dir, "--train_steps=12", "--eval_every=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished at step 12" in again.stdout
    assert _step(model_dir) == 12


def test_saved_model_reloads_in_a_fresh_process_with_identical_logits(finished_run,
                                                                      mnist5k_arrays):
    model_dir, _, _, _ = finished_run
    from tf_metric_robust import run_files

    network, _, _ = run_files.load_network(model_dir)
    images = mnist5k_arrays[0][:16]
    expected = network(images, training=False)["logits"].numpy()
    inputs = os.path.join(model_dir, "probe.npy")
    np.save(inputs, images)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "from tf_metric_robust import export\n"
        "path = export.latest_version(sys.argv[1]) if hasattr(export, 'latest_version') "
        "else sys.argv[1]\n"
        "model = tf.saved_model.load(path)\n"
        "out = model.signatures['serving_default'](images=tf.constant(np.load(sys.argv[2])))\n"
        "np.save(sys.argv[3], out['logits'].numpy())\n")
    output = os.path.join(model_dir, "logits.npy")
    result = subprocess.run([sys.executable, "-c", script, os.path.join(model_dir, "saved_model"),
                             inputs, output], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(output), expected, rtol=1e-5, atol=1e-5)


def test_changed_recipe_is_refused(finished_run, mnist5k_data_dir):
    model_dir, _, _, _ = finished_run
    result = _train(model_dir, mnist5k_data_dir, "--train_steps=12", "--model=madry_mnist")
    assert result.returncode == 2
    assert "different recipe" in result.stderr and "Traceback" not in result.stderr
