"""bin/train end to end on the real mnist5k digits: outputs, resume (guarded by the recipe),
finished runs, SavedModel, and what TensorBoard finds from the top logdir."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import support

pytestmark = pytest.mark.slow  # end to end: bin/ subprocesses or full runs (make test-fast skips)

TINY = [
    "--flagfile=configs/mnist5k.flags",
    "--eval_examples=50",
    "--final_eval_examples=100",
    "--steps=2",
    "--step_size=0.15",
    "--eval_steps=3",
    "--eval_step_size=0.1",
    "--batch_size=32",
    "--eval_batch_size=50",
]


def _train(model_dir, data_dir, *extra, env=None):
    return support.run(
        "bin/train", f"--model_dir={model_dir}", f"--data_dir={data_dir}", *TINY, *extra, env=env
    )


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
    second = _train(
        model_dir,
        mnist5k_data_dir,
        "--train_steps=12",
        "--eval_every=3",
        "--allow_changes=train_steps",
    )
    assert second.returncode == 0, second.stderr[-3000:]
    return model_dir, steps_after_first, first, second


def test_run_writes_the_contract_outputs(finished_run):
    model_dir, _, _, _ = finished_run
    for name in (
        "checkpoints",
        "tensorboard",
        "saved_model",
        "flags.txt",
        "metrics.json",
        "recipe.json",
    ):
        assert os.path.exists(os.path.join(model_dir, name)), name
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["step"] == 12
    # Named after the attack (--eval_steps=3: PGD-3), with the attack and count of each number.
    assert 0.0 <= metrics["eval/pgd3_accuracy"] <= metrics["eval/clean_accuracy"] <= 1.0
    assert "eval/pgd_accuracy" not in metrics
    robust = metrics["accuracies"]["eval/pgd3_accuracy"]
    assert robust["attack"]["steps"] == 3 and robust["attack"]["eps"] == 0.3
    assert robust["num_examples"] == metrics["accuracies"]["eval/clean_accuracy"]["num_examples"]
    # Accuracies average every example asked for (--eval_examples=50, --final_eval_examples=100)
    # and say how many they average.
    second = finished_run[3]
    assert metrics["num_examples"] == 100
    assert "(50 examples)" in second.stdout and "evaluation scored" not in second.stderr
    flags_text = open(os.path.join(model_dir, "flags.txt")).read()
    assert "--mode=tla" in flags_text and "--lambda_triplet=0.5" in flags_text
    # Only our flags (not absl's or TensorFlow's), and the original record: written once.
    assert "--model_dir=" in flags_text and "--train_steps=6" in flags_text
    for internal in ("--test_random_seed", "--hbm_oom_exit", "pdb", "--verbosity", "--flagfile"):
        assert internal not in flags_text
    events = [
        f
        for _, _, files in os.walk(os.path.join(model_dir, "tensorboard"))
        for f in files
        if f.startswith("events.out")
    ]
    assert events
    assert os.path.exists(
        os.path.join(model_dir, "tensorboard", "projector", "projector_config.pbtxt")
    )


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


def test_saved_model_reloads_in_a_fresh_process_with_identical_logits(finished_run, mnist5k_arrays):
    model_dir, _, _, _ = finished_run
    from tf_metric_robust import run_folder

    network, _, _ = run_folder.load_network(model_dir)
    images = mnist5k_arrays[0][:16]
    expected = network(images, training=False)["logits"].numpy()
    inputs = os.path.join(model_dir, "probe.npy")
    np.save(inputs, images)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "from tf_metric_robust import export\n"
        "path = export.latest_version(sys.argv[1])\n"
        "model = tf.saved_model.load(path)\n"
        "out = model.signatures['serving_default'](images=tf.constant(np.load(sys.argv[2])))\n"
        "np.save(sys.argv[3], out['logits'].numpy())\n"
    )
    output = os.path.join(model_dir, "logits.npy")
    result = support.run_python(script, os.path.join(model_dir, "saved_model"), inputs, output)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(output), expected, rtol=1e-5, atol=1e-5)


def test_changed_recipe_is_refused(finished_run, mnist5k_data_dir):
    model_dir, _, _, _ = finished_run
    result = _train(
        model_dir,
        mnist5k_data_dir,
        "--train_steps=12",
        "--model=madry_mnist",
        "--allow_changes=model",
    )
    assert result.returncode == 2
    assert "different recipe" in result.stderr and "Traceback" not in result.stderr


def _files(model_dir):
    """{relative path: modification time} of every file under model_dir."""
    return {
        os.path.relpath(os.path.join(root, name), model_dir): os.path.getmtime(
            os.path.join(root, name)
        )
        for root, _, names in os.walk(model_dir)
        for name in names
    }


def test_resume_with_changed_settings_is_refused_in_one_line(
    finished_run, mnist5k_data_dir, env_without_tensorflow
):
    """A resume with another learning rate and eps is refused before TensorFlow is imported (the
    command cannot import it), naming every difference, and nothing in the run changes."""
    model_dir, _, _, _ = finished_run
    before = _files(model_dir)
    result = _train(
        model_dir,
        mnist5k_data_dir,
        "--train_steps=12",
        "--eval_every=3",
        "--learning_rate=0.5",
        "--eps=0.1",
        env=env_without_tensorflow,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "--learning_rate 0.001 -> 0.5" in lines[0] and "--eps 0.3 -> 0.1" in lines[0]
    assert (
        "--allow_changes=learning_rate,eps" in lines[0]
        or "--allow_changes=eps,learning_rate" in lines[0]
    )
    assert _files(model_dir) == before
    # Unknown or result-neutral names in --allow_changes are usage errors, before TensorFlow.
    bad = _train(model_dir, mnist5k_data_dir, "--allow_changes=learnin_rate")
    assert bad.returncode == 2 and "not a result-changing flag" in bad.stderr


def test_allowed_change_is_recorded_in_history(finished_run, mnist5k_data_dir):
    """--allow_changes=train_steps extended the run 6 -> 12: one history.jsonl line (time, the
    step it took effect, from -> to); recipe.json and flags.txt keep the original record."""
    model_dir, _, _, second = finished_run
    with open(os.path.join(model_dir, "history.jsonl")) as f:
        (entry,) = [json.loads(line) for line in f]
    assert entry["step"] == 6 and entry["time"].endswith("Z")
    assert entry["changes"] == {"train_steps": {"from": 6, "to": 12}}
    with open(os.path.join(model_dir, "recipe.json")) as f:
        recipe = json.load(f)
    assert recipe["settings"]["train_steps"] == 6 and recipe["settings"]["mode"] == "tla"
    assert "model_dir" not in recipe["settings"] and "data_dir" not in recipe["settings"]


def test_old_run_dir_records_its_settings_then_guards_them(tmp_path, caplog):
    """A run dir from before the full recipe (recipe.json: dataset/model/mode only) resumes
    with a warning; its settings go to history.jsonl and guard the next resume."""
    from tf_metric_robust import run_folder
    from tf_metric_robust.config import UserError

    model_dir = str(tmp_path)
    old = {"dataset": "mnist5k", "model": "small_cnn", "model_kwargs": {}, "mode": "tla"}
    with open(os.path.join(model_dir, "recipe.json"), "w") as f:
        json.dump(old, f)
    recipe = dict(old, settings={"seed": 3, "learning_rate": 0.001})
    check = run_folder.check_recipe(model_dir, recipe)
    assert check.record_settings and "predates the full recipe" in caplog.text
    run_folder.record_start(model_dir, recipe, check, 800, flags_text="--seed=3\n")
    with open(os.path.join(model_dir, "history.jsonl")) as f:
        (entry,) = [json.loads(line) for line in f]
    assert entry["settings"] == recipe["settings"] and entry["step"] == 800
    assert json.load(open(os.path.join(model_dir, "recipe.json"))) == old  # never rewritten
    assert run_folder.check_recipe(model_dir, recipe) == run_folder.RecipeCheck(new=False)
    with pytest.raises(UserError, match=r"--seed 3 -> 4; .*--allow_changes=seed"):
        run_folder.check_recipe(model_dir, dict(old, settings={"seed": 4, "learning_rate": 0.001}))
    # An accepted change is the new reference for the next resume.
    changed = dict(old, settings={"seed": 4, "learning_rate": 0.001})
    check = run_folder.check_recipe(model_dir, changed, allow_changes=("seed",))
    run_folder.record_start(model_dir, changed, check, 900)
    assert run_folder.recorded_settings(model_dir)["seed"] == 4
    assert run_folder.check_recipe(model_dir, changed) == run_folder.RecipeCheck(new=False)


def test_tensorboard_finds_scalars_images_and_projector_from_the_top_logdir(finished_run):
    """What `tensorboard --logdir DIR/tensorboard` shows, read through TensorBoard's own data
    provider and projector plugin (as its HTTP routes do)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector import projector_plugin

    model_dir, _, _, _ = finished_run
    logdir = os.path.join(model_dir, "tensorboard")
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    ctx = context.RequestContext()
    scalars = provider.list_scalars(ctx, experiment_id="", plugin_name="scalars")
    tags = {tag for run in scalars.values() for tag in run}
    assert {
        "eval/clean_accuracy",
        "eval/pgd3_accuracy",
        "train/loss",
        "train/pgd2_accuracy",
    } <= tags, tags
    images = provider.list_blob_sequences(ctx, experiment_id="", plugin_name="images")
    assert any("eval/clean_adversarial_perturbation" in run for run in images.values())
    plugin = projector_plugin.ProjectorPlugin(
        base_plugin.TBContext(logdir=logdir, data_provider=provider)
    )
    plugin._update_configs()
    ((run, config),) = plugin._configs.items()
    assert run in {run.run_name for run in provider.list_runs(ctx, experiment_id="")}
    (embedding,) = config.embeddings
    assert list(embedding.tensor_shape) == [100, 128]  # --final_eval_examples=100, fc128
    directory = os.path.dirname(plugin.config_fpaths[run])
    with open(os.path.join(directory, embedding.metadata_path)) as f:
        rows = f.read().splitlines()
    assert rows[0] == "label\tprediction" and len(rows) == 101
    sprite = tf.io.decode_png(tf.io.read_file(os.path.join(directory, embedding.sprite.image_path)))
    assert list(embedding.sprite.single_image_dim) == [28, 28]
    assert sprite.shape[0] == sprite.shape[1] == 28 * 10  # 100 digits, 10 x 10


@pytest.mark.parametrize("script", ["train", "evaluate", "export"])
def test_help_lists_our_flags_without_the_venv(script, tmp_path):
    """`--helpshort` lists our flags and exits 0 (it printed three lines and exited 1), also when
    started by a Python without our dependencies (bin/* re-run under the clone's .venv), from
    the folder holding the clone, by a name that is also the package's."""
    base_python = os.path.join(sys.base_prefix, "bin", "python3")
    if not os.path.exists(os.path.join(support.ROOT, ".venv", "bin", "python")):
        pytest.skip("no .venv in the clone (make install creates it)")
    (tmp_path / "tf_metric_robust").symlink_to(support.ROOT)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no venv activated
    result = subprocess.run(
        [base_python, f"tf_metric_robust/bin/{script}", "--helpshort"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--model_dir" in result.stdout and "--data_dir" in result.stdout
    assert "--test_random_seed" not in result.stdout  # absl's and TF's flags: --helpfull only
    if script == "train":
        for name in ("cifar10", "tiny_imagenet", "fake:<name>", "wide_resnet", "mnist_large"):
            assert name in result.stdout  # --dataset / --model help from the registries


def test_run_folder_mistakes_are_refused_before_tensorflow(tmp_path, env_without_tensorflow):
    """A folder of other files as a new model_dir, a run folder given as --saved_model, and a
    folder that is not a run given to bin/evaluate: one line each, before TensorFlow loads."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    run = tmp_path / "run"
    (run / "saved_model").mkdir(parents=True)
    (run / "recipe.json").write_text("{}")
    cases = [
        (
            ["bin/train", "--flagfile=configs/mnist5k.flags", f"--model_dir={foreign}"],
            f"error: --model_dir {foreign} holds other files (notes.txt) and no recipe.json",
        ),
        (
            ["bin/evaluate", f"--saved_model={run}"],
            f"error: --saved_model {run}: no saved_model.pb there nor in a version folder below "
            f"it; it is a training run: pass --model_dir={run} or --saved_model={run}/saved_model",
        ),
        (
            ["bin/evaluate", f"--model_dir={foreign}"],
            f"error: {foreign} is not a training run (no recipe.json)",
        ),
        (
            ["bin/export", f"--model_dir={foreign}"],
            f"error: {foreign} is not a training run (no recipe.json)",
        ),
    ]
    for command, expected in cases:
        result = support.run(*command, env=env_without_tensorflow, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        assert lines[0].startswith(expected), lines[0]
    assert os.listdir(foreign) == ["notes.txt"]
