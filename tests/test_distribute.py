"""--strategy=multi_worker: two worker processes on 127.0.0.1 train like one process.

Each worker runs bin/train with its own TF_CONFIG; both feed the same global batch of 16 split
8 + 8 (AutoShardPolicy.DATA), so after a few steps both hold the same weights, equal to a single
process trained with the global batch of 16. PGD without random start keeps the attack
independent of the replica id (random starts are seeded per replica).
"""

import json
import os
import re
import socket

import numpy as np
import pytest
import tensorflow as tf

import support

pytestmark = pytest.mark.slow  # end to end: bin/ subprocesses or full runs (make test-fast skips)

ROOT = support.ROOT
FLAGS = [
    "--flagfile=configs/mnist5k.flags",
    "--mode=pgd",
    "--norandom_start",
    "--steps=1",
    "--train_steps=4",
    "--eval_every=2",
    "--checkpoint_every=2",
    "--eval_steps=1",
    "--eval_examples=50",
    "--final_eval_examples=50",
    "--batch_size=16",
    "--noexport",
]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _launch(model_dir, data_dir, weights_file, tf_config=None, strategy="auto"):
    env = dict(os.environ, TFMR_DUMP_WEIGHTS=str(weights_file))
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return support.start(
        "tests/train_with_fault.py",
        f"--model_dir={model_dir}",
        f"--data_dir={data_dir}",
        f"--strategy={strategy}",
        *FLAGS,
        env=env,
    )


def test_two_workers_agree_with_each_other_and_with_one_process(tmp_path, mnist5k_data_dir):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    run_dir, single_dir = tmp_path / "multi", tmp_path / "single"
    processes = [
        _launch(
            run_dir,
            mnist5k_data_dir,
            tmp_path / f"worker{index}.npz",
            {"cluster": cluster, "task": {"type": "worker", "index": index}},
            strategy="multi_worker",
        )
        for index in range(2)
    ]
    processes.append(_launch(single_dir, mnist5k_data_dir, tmp_path / "single.npz"))
    try:
        outputs = [process.communicate(timeout=900) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]

    # Both workers hold the same weights (the all-reduced update is the same on each).
    worker0, worker1 = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    for key in worker0:
        np.testing.assert_array_equal(worker0[key], worker1[key], err_msg=key)
    # ... equal to one process with the same global batch (up to summation order).
    single = np.load(tmp_path / "single.npz")
    for key in worker0:
        np.testing.assert_allclose(worker0[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)

    # Only the chief (worker 0) wrote the run's files; the same final metrics everywhere.
    assert sorted(os.listdir(run_dir / "checkpoints")) == sorted(
        os.listdir(single_dir / "checkpoints")
    )
    chief_checkpoint = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert chief_checkpoint.endswith("ckpt-4")
    assert sorted(os.listdir(run_dir)) == [
        "checkpoints",
        "flags.txt",
        "metrics.json",
        "recipe.json",
        "tensorboard",
    ]
    with open(run_dir / "metrics.json") as f, open(single_dir / "metrics.json") as g:
        multi, one = json.load(f), json.load(g)
    (pgd_key,) = [key for key in one if re.fullmatch(r"eval/pgd\d+_accuracy", key)]
    for key in ("eval/clean_accuracy", pgd_key, "step"):
        assert abs(multi[key] - one[key]) < 1e-6, key
    assert all('"step": 4' in stdout for stdout, _ in outputs)


def test_strategies_in_one_process_do_not_share_collective_keys():
    """Two MirroredStrategy objects in one process, all-reducing tensors of different shapes: TF
    gives both the same collective keys, and the second fails with 'Shape mismatch in the
    collective instance' unless each strategy has a key range of its own."""
    from tf_metric_robust import distribute

    def all_reduced(size):
        strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])

        @tf.function
        def step():
            return tf.distribute.get_replica_context().all_reduce("sum", tf.ones([size]))

        return strategy.experimental_local_results(strategy.run(step))[0].numpy()

    np.testing.assert_array_equal(all_reduced(3), np.full([3], 2.0))
    np.testing.assert_array_equal(all_reduced(5), np.full([5], 2.0))
