"""AdversarialTrainer: each mode learns, TLA's triplet term reaches the embedding, replicas agree
(one step on 1 and on 2 replicas gives the same weights)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import distribute, models
from tf_metric_robust.config import AttackConfig, OptimizerConfig, TrainConfig, TripletConfig
from tf_metric_robust.training import AdversarialTrainer
from tf_metric_robust.training.mode_losses import Batch

pytestmark = (
    pytest.mark.slow
)  # trains beyond a few steps or runs full attacks (make test-fast skips)

ATTACK = AttackConfig(eps=0.1, step_size=0.05, steps=3)
FIXED_START = AttackConfig(eps=0.3, step_size=0.1, steps=3, random_start=False)


def _trainer(mode, *, attack=ATTACK, triplet=None, seed=0, learning_rate=1e-3, optimizer=None):
    keras.utils.set_random_seed(seed)
    network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=32)
    trainer = AdversarialTrainer(network, mode=mode, attack=attack, triplet=triplet, seed=seed)
    trainer.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate))
    return trainer


def _batches(arrays, batch_size, count, seed=0):
    images, labels = arrays
    order = np.random.default_rng(seed).permutation(len(labels))[: batch_size * count]
    return tf.data.Dataset.from_tensor_slices((images[order], labels[order])).batch(batch_size)


@pytest.mark.parametrize(
    "mode,triplet",
    [
        ("natural", None),
        ("pgd", None),
        ("tla", TripletConfig(lambda_triplet=2.0)),
        ("tla", TripletConfig(negative_pool="bank", bank_size=256, positive="both")),
        ("tla", TripletConfig(mining="semihard", distance="l2", margin=0.5)),
    ],
)
def test_training_lowers_the_loss(mnist5k_arrays, mode, triplet):
    trainer = _trainer(mode, triplet=triplet)
    history = trainer.fit(_batches(mnist5k_arrays, 32, 60), epochs=1, verbose=0)
    steps = trainer.optimizer.iterations.numpy()
    assert steps == 60
    # Training logs only the accuracies the mode computes (never a constant 0 in TensorBoard).
    logged = {name for name in history.history if name.endswith("_accuracy")}
    expected = {"natural": {"clean_accuracy"}, "pgd": {"pgd_accuracy"}}
    assert logged == expected.get(mode, {"clean_accuracy", "pgd_accuracy"})
    # Per-step losses: fit's logs are running means; compare a fresh evaluation instead.
    del history
    evaluation = _batches(mnist5k_arrays, 64, 4, seed=1)
    fresh = _trainer(mode, triplet=triplet)
    before = fresh.evaluate(evaluation, return_dict=True, verbose=0)
    after = trainer.evaluate(evaluation, return_dict=True, verbose=0)
    assert np.isfinite(after["loss"])
    assert after["ce_loss"] < before["ce_loss"]
    accuracy = "clean_accuracy" if mode == "natural" else "pgd_accuracy"
    assert after[accuracy] > before[accuracy] + 0.1


def test_tla_triplet_term_is_positive_and_reaches_the_embedding(mnist5k_arrays):
    trainer = _trainer("tla", triplet=TripletConfig(margin=0.5))
    images, labels = next(iter(_batches(mnist5k_arrays, 32, 1)))
    labels = tf.cast(labels, tf.int64)
    adversarial = images + 0.1 * tf.sign(tf.random.stateless_normal(images.shape, [1, 2]))
    adversarial = tf.clip_by_value(adversarial, 0.0, 1.0)
    embedding_layer = trainer.network.get_layer("fc")  # the dense layer feeding 'embedding'
    with tf.GradientTape() as tape:
        _, logs, _, _ = trainer.compute_losses(Batch(images, labels), adversarial, True)
        triplet = tf.reduce_mean(logs["triplet_loss"])
    gradient = tape.gradient(triplet, embedding_layer.kernel)
    assert float(triplet) > 0.0
    assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0.0


def _one_step_weights(strategy, mode, batch):
    with strategy.scope():
        trainer = _trainer(
            mode, attack=FIXED_START, optimizer=keras.optimizers.SGD(0.5, momentum=0.9)
        )
    trainer.fit(tf.data.Dataset.from_tensors(batch).repeat(2), epochs=1, verbose=0)
    return [w.numpy() for w in trainer.network.weights], trainer.optimizer.iterations.numpy()


# trades: see test_two_replica_kl_mode_step_with_non_zero_kl_term (from x' = x its KL gradient is
# rounding noise, whose sign depends on the per-replica batch).
@pytest.mark.parametrize("mode", ["natural", "pgd", "mart"])
def test_two_replica_step_equals_one_replica_step(mnist5k_arrays, mode):
    """Keras 3 sums replica gradients: the loss must be scaled by the global batch exactly once."""
    batch = next(iter(_batches(mnist5k_arrays, 16, 1)))
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(cpus) >= 2, "conftest.py should split the CPU into two logical devices"
    single, single_steps = _one_step_weights(tf.distribute.OneDeviceStrategy(cpus[0]), mode, batch)
    double, double_steps = _one_step_weights(distribute.mirrored_strategy(cpus[:2]), mode, batch)
    assert single_steps == double_steps == 2
    for a, b in zip(single, double):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_tla_trains_under_two_replicas_with_bank(mnist5k_arrays):
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    with distribute.mirrored_strategy(cpus).scope():
        trainer = _trainer("tla", triplet=TripletConfig(negative_pool="bank", bank_size=64))
    logs = trainer.fit(_batches(mnist5k_arrays, 16, 6), epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][-1]) and np.isfinite(logs["triplet_loss"][-1])
    _, bank_labels, valid = trainer.bank.read()
    # Each replica banks its own 8 rows per step: 6 x 8 = 48 of 64 slots filled.
    assert int(tf.reduce_sum(tf.cast(valid, tf.int32))) == 48


def test_bad_mode_and_missing_attack_raise():
    network = models.build("small_cnn", 10, (28, 28, 1))
    with pytest.raises(ValueError, match="mode must be one of natural, pgd, tla, trades, mart"):
        TrainConfig(model_dir="unused", mode="fancy", attack=ATTACK)
    with pytest.raises(ValueError, match="attack"):
        AdversarialTrainer(network, mode="pgd")


def test_extra_pool_evaluation_counts_every_example(mnist5k_arrays):
    """Only training batches carry the extra clean pool; evaluation must score all examples."""
    trainer = _trainer("tla", triplet=TripletConfig(negative_pool="extra", pool_multiplier=2))
    trainer.fit(_batches(mnist5k_arrays, 30, 2), epochs=1, verbose=0)
    trainer.evaluate(_batches(mnist5k_arrays, 25, 2, seed=3), verbose=0)
    assert int(trainer.trackers["clean_accuracy"].count.numpy()) == 50


def test_cpu_strategies_keep_keras_off_the_multi_device_iterator():
    """'auto' and 'one_device' on a host without GPUs are TF's default strategy: under a real
    OneDeviceStrategy Keras feeds batches through a MultiDeviceIterator, after which every CPU op
    of the process runs ~2x slower (bench/strategy_overhead.py)."""
    from tf_metric_robust import distribute

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("GPU host: 'auto' is MirroredStrategy over the GPUs")
    for name in ("auto", "one_device"):
        strategy = distribute.make_strategy(name)
        assert strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1
        dataset = tf.data.Dataset.range(4).batch(2)
        assert isinstance(strategy.experimental_distribute_dataset(dataset), tf.data.Dataset)


def test_extra_pool_reaches_each_replica_as_its_batch_then_its_pool():
    """With --negative_pool=extra the input is [batch; pool]; inputs.replica_major reorders it
    so that the contiguous slice a strategy gives each replica is [its batch rows; its pool]."""
    from tf_metric_robust.training.inputs import replica_major

    batch, multiplier, replicas = 4, 2, 2
    ids = tf.range(batch * (1 + multiplier), dtype=tf.int64)
    np.testing.assert_array_equal(
        replica_major(ids, batch, replicas), [0, 1, 4, 5, 6, 7, 2, 3, 8, 9, 10, 11]
    )
    images = tf.reshape(tf.cast(ids, tf.float32), [-1, 1, 1, 1]) * tf.ones([1, 2, 2, 1])
    np.testing.assert_array_equal(
        replica_major(images, batch, replicas)[:, 0, 0, 0], replica_major(ids, batch, replicas)
    )
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")][:replicas]
    strategy = distribute.mirrored_strategy(cpus)
    dataset = tf.data.Dataset.from_tensors(replica_major(ids, batch, replicas))
    per_replica = next(iter(strategy.experimental_distribute_dataset(dataset)))
    share = batch // replicas
    for replica, rows in enumerate(strategy.experimental_local_results(per_replica)):
        rows = rows.numpy()
        # mode_losses.split_batch takes the first 1/(1 + multiplier) rows as the batch.
        assert sorted(rows[:share]) == list(range(replica * share, (replica + 1) * share))
        assert all(row >= batch for row in rows[share:])


def test_tla_loss_adds_lambda_triplet_times_each_authors_term(mnist5k_arrays):
    """total = CE + lambda_triplet * sum over positive terms of (hinge + lambda_norm * norm), as
    train_update_fast_triplet.py:366-376 adds utils.triplet_loss terms."""
    triplet = TripletConfig(
        positive="both", margin=0.2, margin_other=0.1, lambda_triplet=3.0, lambda_norm=0.5
    )
    trainer = _trainer("tla", triplet=triplet)
    images, labels = next(iter(_batches(mnist5k_arrays, 32, 1)))
    labels = tf.cast(labels, tf.int64)
    adversarial = tf.clip_by_value(images + 0.1, 0.0, 1.0)
    total, logs, _, _ = trainer.compute_losses(Batch(images, labels), adversarial, False)
    out = trainer.network(tf.concat([adversarial, images], 0), training=False)
    adv_emb, clean_emb = tf.split(out["embedding"], 2)
    from tf_metric_robust import losses

    index, found = losses.hardest_negative_index(adv_emb, labels, clean_emb, labels)
    negative = tf.gather(clean_emb, index)
    partner = losses.same_class_partner_index(labels, trainer._seed("training.partner"))
    expected = 0.0
    for positive, margin in ((clean_emb, 0.2), (tf.gather(clean_emb, partner), 0.1)):
        term, _ = losses.tla_triplet_loss(
            adv_emb, positive, negative, margin=margin, lambda_norm=0.5, valid=found
        )
        expected += term
    norm = losses.embedding_norm_loss(adv_emb, clean_emb, negative)
    assert float(tf.reduce_mean(norm)) > 0.0
    np.testing.assert_allclose(logs["triplet_loss"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, logs["ce_loss"] + 3.0 * expected, rtol=1e-5, atol=1e-6)


def _bn_network(seed=0):
    """A tiny conv net with batch norm, {'logits', 'embedding'} as the models return."""
    keras.utils.set_random_seed(seed)
    images = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2)(images)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(keras.layers.Flatten()(x))
    embedding = keras.layers.Dense(16, activation="relu", name="embedding")(x)
    logits = keras.layers.Dense(10, name="logits")(embedding)
    return keras.Model(images, {"logits": logits, "embedding": embedding})


@pytest.mark.parametrize("with_bn", [False, True])
def test_separate_and_joint_passes_differ_only_through_batch_norm(mnist5k_arrays, with_bn):
    """The authors run clean, adversarial, negative and other-positive images in separate passes
    (own BN batch statistics); a joint pass is the same function on a network without BN."""
    images, labels = next(iter(_batches(mnist5k_arrays, 32, 1)))
    labels = tf.cast(labels, tf.int64)
    others = tf.reverse(images, [0])  # any images: only the passes are compared
    adversarial = tf.clip_by_value(images + 0.2 * tf.sign(images - 0.5), 0.0, 1.0)
    results = {}
    for separate in (True, False):
        triplet = TripletConfig(
            positive="both", other_positive="data", separate_passes=separate, margin=0.5
        )
        if with_bn:
            network = _bn_network()
        else:
            keras.utils.set_random_seed(0)
            network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=16)
        trainer = AdversarialTrainer(network, mode="tla", attack=ATTACK, triplet=triplet)
        total, logs, _, _ = trainer.compute_losses(
            Batch(images, labels, other_images=others), adversarial, True
        )
        results[separate] = (total.numpy(), logs["ce_loss"].numpy())
    total_gap = np.abs(results[True][0] - results[False][0]).max()
    ce_gap = np.abs(results[True][1] - results[False][1]).max()
    if with_bn:
        assert ce_gap > 1e-3 and total_gap > 1e-3
    else:
        assert ce_gap < 1e-5 and total_gap < 1e-5


def test_other_positive_data_needs_other_images(mnist5k_arrays):
    trainer = _trainer("tla", triplet=TripletConfig(positive="other", other_positive="data"))
    with pytest.raises(ValueError, match="other_positives=True"):
        trainer.fit(_batches(mnist5k_arrays, 16, 1), epochs=1, verbose=0)
    trainer = _trainer("tla", triplet=TripletConfig(positive="other", other_positive="data"))
    images, labels = mnist5k_arrays
    stream = tf.data.Dataset.from_tensor_slices(((images[:32], images[32:64]), labels[:32])).batch(
        16
    )
    logs = trainer.fit(stream, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][-1]) and trainer.optimizer.iterations.numpy() == 2


def test_attack_bn_mode_train_attacks_with_batch_statistics(mnist5k_arrays):
    """--attack_bn_mode=train (Madry's PGD-AT) differentiates the training-mode network."""
    images, labels = next(iter(_batches(mnist5k_arrays, 16, 1)))
    labels = tf.cast(labels, tf.int64)
    trainer = AdversarialTrainer(
        _bn_network(), mode="pgd", attack=FIXED_START, attack_bn_mode="train"
    )
    bn = [
        layer
        for layer in trainer.network.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ][0]
    np.testing.assert_allclose(
        trainer.training_logits_fn(images),
        trainer.network(images, training=True)["logits"],
        rtol=1e-5,
    )
    moving_mean = bn.moving_mean.numpy().copy()
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    trainer.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=1, verbose=0)
    # 3 attack steps + the weight update ran in training mode: the moving mean moved 4 times
    # (momentum 0.99 each), not once as with an inference-mode attack.
    inference = AdversarialTrainer(_bn_network(), mode="pgd", attack=FIXED_START)
    inference_bn = [
        layer
        for layer in inference.network.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ][0]
    inference.compile(optimizer=keras.optimizers.SGD(0.0))
    inference.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=1, verbose=0)
    moved = np.abs(bn.moving_mean.numpy() - moving_mean).max()
    moved_once = np.abs(inference_bn.moving_mean.numpy() - moving_mean).max()
    assert moved > 2.5 * moved_once > 0
    with pytest.raises(ValueError, match="attack_bn_mode must be one of inference, train"):
        TrainConfig(model_dir="unused", mode="pgd", attack=ATTACK, attack_bn_mode="eval")


def test_select_best_keeps_the_best_validation_checkpoint_and_uses_it(
    tmp_path, mnist5k_run_config, mnist5k_data_dir
):
    """--select_best=pgd: validation split held out of TRAINING, best checkpoint kept, final
    metrics computed with its weights; never without a validation split."""
    import json
    import os

    from tf_metric_robust import data, training
    from tf_metric_robust.training import run
    from tf_metric_robust.config import UserError

    attack = AttackConfig(eps=0.1, step_size=0.05, steps=2)
    config = mnist5k_run_config(
        batch_size=20,
        train_steps=4,
        examples=40,
        attack=attack,
        model="small_cnn",
        eval_every=2,
        checkpoint_every=2,
        eval_batch_size=40,
        optimizer=OptimizerConfig(name="adam", learning_rate=1e-3),
        validation_examples=100,
        select_best="pgd",
        export=False,
    )
    metrics = training.train(config)
    record = run.read_record(os.path.join(config.model_dir, run.BEST_DIR))
    assert record["validation_examples"] == 100 and record["step"] in (2, 4)
    assert metrics["selected_checkpoint"] == record
    with open(os.path.join(config.model_dir, "metrics.json")) as f:
        assert json.load(f)["selected_checkpoint"]["step"] == record["step"]
    # The validation split is the first 100 training examples, never seen in training.
    held_out = next(
        iter(
            data.eval_dataset(
                "mnist5k",
                batch_size=100,
                data_dir=mnist5k_data_dir,
                split=data.validation_split("mnist5k", 100),
            )
        )
    )[0]
    trained = data.train_dataset(
        "mnist5k", batch_size=100, seed=0, data_dir=mnist5k_data_dir, validation_examples=100
    )
    seen = np.concatenate([images.numpy() for images, _ in trained.take(39)])  # one epoch
    held = {image.tobytes() for image in held_out.numpy()}
    assert len(seen) == 3900 and not held & {image.tobytes() for image in seen}
    bad = TrainConfig(
        **{**config.__dict__, "model_dir": str(tmp_path / "bad"), "validation_examples": 0}
    )
    with pytest.raises(UserError, match="validation_examples"):
        training.train(bad)


@pytest.mark.parametrize("round_to_grid", [False, True])
def test_eval_round_to_grid_puts_evaluation_adversarials_on_the_pixel_grid(
    mnist5k_arrays, monkeypatch, round_to_grid
):
    """--eval_round_to_grid rounds the evaluation attack's output to k/255, as the authors' CIFAR
    evaluation (pgd_attack.py:285-286); training attacks are never rounded."""
    from tf_metric_robust.training import trainer as trainer_module

    images, labels = next(iter(_batches(mnist5k_arrays, 16, 1)))
    off_grid = 0.3 / 255  # what the fake attack adds: rounding must undo it
    monkeypatch.setattr(trainer_module.attacks, "pgd", lambda fn, x, y, **kwargs: x + off_grid)
    keras.utils.set_random_seed(0)
    trainer = AdversarialTrainer(
        models.build("small_cnn", 10, (28, 28, 1)),
        mode="pgd",
        attack=ATTACK,
        eval_round_to_grid=round_to_grid,
    )
    trainer.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    seen = []
    compute_losses = trainer.compute_losses
    monkeypatch.setattr(
        trainer,
        "compute_losses",
        lambda *args, **kwargs: seen.append(args[1]) or compute_losses(*args, **kwargs),
    )
    trainer.evaluate(tf.data.Dataset.from_tensors((images, labels)), verbose=0)
    gap = np.abs(seen[0].numpy() - images.numpy()).max()
    assert (gap < 1e-6) if round_to_grid else (abs(gap - off_grid) < 1e-6)


# ---------------------------------------------------------------------------------------------
# TRADES and MART.


@pytest.mark.parametrize("mode", ["trades", "mart"])
def test_kl_modes_lower_the_loss(mnist5k_arrays, mode):
    trainer = _trainer(mode)
    trainer.fit(_batches(mnist5k_arrays, 32, 40), epochs=1, verbose=0)
    assert trainer.optimizer.iterations.numpy() == 40
    evaluation = _batches(mnist5k_arrays, 64, 4, seed=1)
    before = _trainer(mode).evaluate(evaluation, return_dict=True, verbose=0)
    after = trainer.evaluate(evaluation, return_dict=True, verbose=0)
    assert np.isfinite(after["loss"])
    assert after["loss"] < before["loss"]
    assert after["ce_loss"] < before["ce_loss"]
    # 40 steps: MART measured 0.008 -> 0.098 PGD accuracy, TRADES more.
    assert after["pgd_accuracy"] > before["pgd_accuracy"] + 0.05


def _replica_independent_perturbation(self, images, labels):
    """A fixed perturbation of each image (no per-replica random start), so 1 and 2 replicas see
    the same adversarial batch and a non-zero KL term."""
    del self, labels
    return tf.clip_by_value(images + 0.3 * tf.sign(tf.sin(1000.0 * images + 1.0)), 0.0, 1.0)


@pytest.mark.parametrize("mode", ["trades", "mart"])
def test_two_replica_kl_mode_step_with_non_zero_kl_term(mnist5k_arrays, mode, monkeypatch):
    """From x' = x, TRADES' KL is 0 and its input gradient rounding noise (whose sign steps
    differ with the per-replica batch): a fixed perturbation makes the KL term count."""
    monkeypatch.setattr(AdversarialTrainer, "_training_attack", _replica_independent_perturbation)
    test_two_replica_step_equals_one_replica_step(mnist5k_arrays, mode)


def test_kl_modes_train_step_uses_the_loss_functions(mnist5k_arrays):
    """compute_losses = losses.trades_loss / mart_loss on the network's clean and adversarial
    logits, with beta passed through."""
    from tf_metric_robust import losses

    images, labels = next(iter(_batches(mnist5k_arrays, 16, 1)))
    labels = tf.cast(labels, tf.int64)
    adversarial = _replica_independent_perturbation(None, images, labels)
    for mode, loss_fn in (("trades", losses.trades_loss), ("mart", losses.mart_loss)):
        keras.utils.set_random_seed(0)
        network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=32)
        trainer = AdversarialTrainer(network, mode=mode, attack=ATTACK, beta=2.5)
        total, logs, clean, adv = trainer.compute_losses(Batch(images, labels), adversarial, False)
        expected = loss_fn(
            labels, network(images)["logits"], network(adversarial)["logits"], beta=2.5
        )
        np.testing.assert_allclose(total.numpy(), expected.numpy(), rtol=1e-5)
        assert float(tf.reduce_mean(logs["robust_loss"])) > 0.0


@pytest.mark.parametrize("base", ["none", "trades"])
def test_trades_label_smoothing_reaches_the_natural_term_only(mnist5k_arrays, base):
    """--label_smoothing with TRADES (and TLA on TRADES): the total is losses.trades_loss with
    the smoothing, ce_loss the smoothed CE of the clean logits, robust_loss the unsmoothed KL."""
    from tf_metric_robust import losses

    images, labels = next(iter(_batches(mnist5k_arrays, 16, 1)))
    labels = tf.cast(labels, tf.int64)
    adversarial = _replica_independent_perturbation(None, images, labels)
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=32)
    options = dict(mode="trades") if base == "none" else dict(mode="tla", base="trades")
    trainer = AdversarialTrainer(network, attack=ATTACK, beta=5.0, label_smoothing=0.1, **options)
    result = trainer.compute_losses(Batch(images, labels), adversarial, False)
    clean, adv = network(images)["logits"], network(adversarial)["logits"]
    smoothed = losses.trades_loss(labels, clean, adv, beta=5.0, label_smoothing=0.1)
    plain = losses.trades_loss(labels, clean, adv, beta=5.0)
    assert float(tf.reduce_max(tf.abs(smoothed - plain))) > 1e-3
    ce = keras.losses.categorical_crossentropy(
        tf.one_hot(labels, 10), clean, from_logits=True, label_smoothing=0.1
    )
    np.testing.assert_allclose(result.logs["ce_loss"], ce, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.logs["robust_loss"], smoothed - ce, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        result.logs["robust_loss"],
        plain - losses.trades_loss(labels, clean, clean, beta=0.0),
        rtol=1e-4,
        atol=1e-5,
    )
    if base == "none":
        np.testing.assert_allclose(result.total, smoothed, rtol=1e-5)


def test_mart_refuses_label_smoothing_and_trades_its_attack_loss():
    from tf_metric_robust.config import UserError, check_mode

    network = models.build("small_cnn", 10, (28, 28, 1))
    with pytest.raises(ValueError, match="label_smoothing"):
        AdversarialTrainer(network, mode="mart", attack=ATTACK, label_smoothing=0.1)
    rules = dict(base="pgd", positive_noise=0.0)
    with pytest.raises(UserError, match="label_smoothing=0"):
        check_mode("mart", label_smoothing=0.1, attack=ATTACK, **rules)
    # TRADES smooths its natural term as DM-Improves-AT (losses.trades_loss).
    check_mode("trades", label_smoothing=0.1, attack=ATTACK, **rules)
    with pytest.raises(UserError, match="attack_loss"):
        check_mode(
            "trades",
            label_smoothing=0.0,
            attack=AttackConfig(eps=0.1, step_size=0.05, steps=3, loss="cw"),
            **rules,
        )
    with pytest.raises(UserError, match="beta must be in"):
        TrainConfig(model_dir="unused", mode="trades", beta=-1.0, attack=ATTACK)
    check_mode("tla", label_smoothing=0.1, attack=ATTACK, **rules)


# ---------------------------------------------------------------------------------------------
# TLA on TRADES (--base=trades; ours, not the paper's).


def _tla_on_trades(network, **options):
    """TLA whose triplet term is added to the TRADES objective (base 'trades'), attack ATTACK."""
    return AdversarialTrainer(network, mode="tla", attack=ATTACK, base="trades", **options)


def test_tla_on_trades_is_the_trades_loss_plus_the_triplet_term(mnist5k_arrays):
    from tf_metric_robust import attacks, losses
    from tf_metric_robust.attacks import objectives

    images, labels = next(iter(_batches(mnist5k_arrays, 16, 1)))
    labels = tf.cast(labels, tf.int64)
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=32)
    trainer = _tla_on_trades(
        network, beta=2.5, triplet=TripletConfig(lambda_triplet=0.7, margin=0.5)
    )
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    adversarial = _replica_independent_perturbation(None, images, labels)
    total, logs, clean, adv = trainer.compute_losses(Batch(images, labels), adversarial, False)
    expected = losses.trades_loss(
        labels, network(images)["logits"], network(adversarial)["logits"], beta=2.5
    )
    np.testing.assert_allclose(
        total.numpy(), (expected + 0.7 * logs["triplet_loss"]).numpy(), rtol=1e-5
    )
    assert float(tf.reduce_mean(logs["triplet_loss"])) > 0.0
    np.testing.assert_allclose(logs["robust_loss"] + logs["ce_loss"], expected, rtol=1e-5)
    # The training attack is TRADES': KL against the clean logits from x + 0.001 N(0, 1).
    kwargs = {**ATTACK.kwargs(), "loss": "kl", "random_start": objectives.TRADES_START_STD}
    reference = attacks.pgd(
        trainer.logits_fn,
        images,
        network(images)["logits"],
        seed=trainer._seed("training.attack"),
        **kwargs,
    )
    np.testing.assert_allclose(trainer._training_attack(images, labels), reference, atol=1e-6)


def test_tla_on_trades_lowers_the_loss(mnist5k_arrays):
    def trainer():
        keras.utils.set_random_seed(0)
        network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=32)
        built = _tla_on_trades(network, triplet=TripletConfig(lambda_triplet=0.5))
        built.compile(optimizer=keras.optimizers.Adam(1e-3))
        return built

    trained = trainer()
    trained.fit(_batches(mnist5k_arrays, 32, 40), epochs=1, verbose=0)
    evaluation = _batches(mnist5k_arrays, 64, 4, seed=1)
    before = trainer().evaluate(evaluation, return_dict=True, verbose=0)
    after = trained.evaluate(evaluation, return_dict=True, verbose=0)
    assert np.isfinite(after["loss"]) and after["loss"] < before["loss"]
    assert np.isfinite(after["robust_loss"]) and np.isfinite(after["triplet_loss"])
    assert after["pgd_accuracy"] > before["pgd_accuracy"] + 0.05


def test_base_trades_is_refused_where_it_cannot_run():
    from tf_metric_robust.config import UserError, check_mode

    network = models.build("small_cnn", 10, (28, 28, 1))
    with pytest.raises(ValueError, match="base"):
        AdversarialTrainer(network, mode="pgd", attack=ATTACK, base="trades")
    with pytest.raises(ValueError, match="positive_noise"):
        AdversarialTrainer(
            network,
            mode="tla",
            attack=ATTACK,
            base="trades",
            triplet=TripletConfig(positive_noise=8 / 255),
        )
    with pytest.raises(UserError, match="--mode=tla"):
        check_mode("mart", label_smoothing=0.0, attack=ATTACK, base="trades", positive_noise=0)
    check_mode("tla", label_smoothing=0.1, attack=ATTACK, base="trades", positive_noise=0)
    with pytest.raises(UserError, match="positive_noise"):
        check_mode("tla", label_smoothing=0.0, attack=ATTACK, base="trades", positive_noise=0.1)


def test_trainer_without_evaluation_attack_fails_at_construction():
    network = models.build("small_cnn", 10, (28, 28, 1))
    with pytest.raises(ValueError, match="eval_attack"):
        AdversarialTrainer(network, mode="natural")
    AdversarialTrainer(network, mode="natural", eval_attack=ATTACK)


def test_kl_attack_start_gaussian_or_uniform(mnist5k_arrays):
    """TRADES' attack starts at x + 0.001 N(0, 1) (trades.py:31) by default, uniformly in the
    eps-ball with kl_start 'uniform' (DM-Improves-AT gowal21uncovering/utils/trades.py:48-49);
    one step of 1e-6 leaves the start visible."""
    images, labels = next(iter(_batches(mnist5k_arrays, 16, 1)))
    images = tf.clip_by_value(images, 0.3, 0.7)  # the whole ball inside [0, 1]
    network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=8)
    spread = {}
    for start in ("gaussian", "uniform"):
        attack = AttackConfig(eps=0.3, step_size=1e-6, steps=1, kl_start=start)
        trainer = AdversarialTrainer(network, mode="trades", attack=attack)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1))
        delta = trainer._training_attack(images, tf.cast(labels, tf.int64)) - images
        spread[start] = float(tf.reduce_max(tf.abs(delta)))
    assert spread["gaussian"] < 0.01 and 0.25 < spread["uniform"] <= 0.3 + 1e-6


def test_attack_bn_mode_batch_keeps_the_moving_statistics():
    """'batch': the attack sees batch statistics, as 'train' (the same adversarial images), but
    leaves the BN moving statistics as they were (DM-Improves-AT's track_bn_stats(False))."""
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0.2, 0.8, size=(8, 16, 16, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 10, 8), tf.int64)
    attack = AttackConfig(eps=8 / 255, step_size=2 / 255, steps=2)
    results = {}
    for mode in ("train", "batch"):
        keras.utils.set_random_seed(0)
        network = models.build("wide_resnet_swish", 10, (16, 16, 3), depth=10, width=1)
        trainer = AdversarialTrainer(network, mode="trades", attack=attack, attack_bn_mode=mode)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1))
        before = [v.numpy() for v in network.non_trainable_variables]
        adversarial = tf.function(trainer._training_attack)(images, labels)
        after = [v.numpy() for v in network.non_trainable_variables]
        moved = any(not np.array_equal(b, a) for b, a in zip(before, after))
        results[mode] = (adversarial.numpy(), moved)
    np.testing.assert_allclose(results["batch"][0], results["train"][0], atol=1e-6)
    assert results["train"][1] and not results["batch"][1]
