"""Tests for tf_metric_robust.models: output contract, embedding layer, precision, saving, decay."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import support
from tf_metric_robust import models

# (name, input_shape, kwargs, embedding dim); the WideResNet is shrunk to WRN-10-1 for speed.
CASES = [
    ("small_cnn", (28, 28, 1), {}, 128),
    ("madry_mnist", (28, 28, 1), {}, 1024),
    ("wide_resnet", (32, 32, 3), {"depth": 10, "width": 1}, 64),
    ("preact_resnet18", (32, 32, 3), {}, 512),
    ("mnist_large", (28, 28, 1), {}, 1024),
    ("mnist_mlp", (28, 28, 1), {}, 1024),
    ("wide_resnet_swish", (32, 32, 3), {"depth": 10, "width": 1}, 64),
]
IDS = [c[0] for c in CASES]
WEIGHT_DECAY = 2e-4


def _images(shape, n=4, seed=0):
    return np.random.default_rng(seed).uniform(size=(n,) + shape).astype(np.float32)


@pytest.fixture(scope="module")
def built():
    """Builds each CASES model once (with weight decay 2e-4) and shares it between tests."""
    cache = {}

    def get(name):
        if name not in cache:
            _, shape, kwargs, _ = CASES[IDS.index(name)]
            cache[name] = models.build(name, 10, shape, weight_decay=WEIGHT_DECAY, **kwargs)
        return cache[name]

    return get


def _kernels(model):
    return [
        layer.kernel
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]


@pytest.fixture
def bfloat16_policy():
    """Sets the global mixed_bfloat16 policy for one test and always restores the previous one."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("name,shape,kwargs,dim", CASES, ids=IDS)
def test_outputs_embedding_layer_and_logits_head(built, name, shape, kwargs, dim):
    model = built(name)
    x = _images(shape)
    out = model(x, training=False)
    assert set(out) == {"logits", "embedding"}
    assert out["logits"].shape == (4, 10) and out["logits"].dtype == tf.float32
    assert out["embedding"].shape == (4, dim) and out["embedding"].dtype == tf.float32
    assert models.embedding_dim(model) == dim
    # The layer named 'embedding' produces outputs['embedding'] ...
    features = keras.Model(model.input, model.get_layer("embedding").output)
    np.testing.assert_allclose(features(x, training=False), out["embedding"], rtol=1e-6, atol=1e-6)
    # ... and it is the input of the final dense layer 'logits'.
    head = model.get_layer("logits")
    assert head.input is model.get_layer("embedding").output
    np.testing.assert_allclose(
        out["embedding"] @ head.kernel + head.bias, out["logits"], rtol=1e-5, atol=1e-5
    )
    train_out = model(x, training=True)
    assert train_out["logits"].shape == (4, 10)


def test_wrn_34_10_matches_madry_parameter_count():
    model = models.build("wide_resnet", 10, (32, 32, 3))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    # Madry's WRN-34-10 (parameter-free shortcuts). PyTorch's 46,160,474 adds 1x1 shortcut convs:
    # 16*160 + 160*320 + 320*640 = 258,560 parameters.
    assert trainable == 46_160_474 - 258_560 == 45_901_914
    assert models.embedding_dim(model) == 640
    assert len(_kernels(model)) == 1 + 3 * 5 * 2 + 1


def test_preact_resnet18_parameter_count(built):
    trainable = sum(int(np.prod(v.shape)) for v in built("preact_resnet18").trainable_weights)
    # kuangliu/pytorch-cifar's 11,171,146 plus the final BN (2 * 512) of He et al.
    assert trainable == 11_171_146 + 1024


def test_mnist_large_is_the_authors_network(built):
    """model_mnist_large.py (paper Table 5): 4 conv3x3 + fc1024, each with BN (decay 0.9)."""
    model = built("mnist_large")
    assert model.count_params() == 13_250_186  # 13,247,178 trainable + 3,008 BN moving stats
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 5 and all(n.momentum == 0.9 and n.epsilon == 1e-3 for n in norms)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128, 256]
    assert all(c.kernel_size == (3, 3) for c in convs)


def test_mnist_mlp_is_the_authors_network(built):
    """model_mnist_mlp.py: three fc1024 with BN (decay 0.9, eps 1e-3), the last one's ReLU the
    embedding: 784x1024 + 2 x 1024x1024 + 1024x10 weights, their biases, 3 BN's gamma and beta."""
    model = built("mnist_mlp")
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert trainable == 784 * 1024 + 2 * 1024 * 1024 + 1024 * 10 + 3 * 1024 + 10 + 3 * 2 * 1024
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 3 and all(n.momentum == 0.9 and n.epsilon == 1e-3 for n in norms)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [1024, 1024, 1024, 10]
    assert model.get_layer("embedding").input is norms[-1].output  # BN, then the embedding ReLU


@pytest.mark.parametrize("name,shape,kwargs,dim", CASES[:3], ids=IDS[:3])
def test_mixed_bfloat16_gives_float32_outputs(bfloat16_policy, name, shape, kwargs, dim):
    model = models.build(name, 10, shape, **kwargs)
    out = model(_images(shape), training=True)
    assert out["logits"].dtype == tf.float32
    assert out["embedding"].dtype == tf.float32
    assert any(layer.compute_dtype == "bfloat16" for layer in model.layers)
    assert all(v.dtype == "float32" for v in model.trainable_weights)


# PreAct ResNet-18 is left out: only stock layers beyond the WideResNet's, and 45 MB to write.
@pytest.mark.parametrize("name,shape,kwargs,dim", CASES[:3], ids=IDS[:3])
def test_keras_save_load_round_trip(built, tmp_path, name, shape, kwargs, dim):
    model = built(name)
    x = _images(shape)
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    before, after = model(x, training=False), loaded(x, training=False)
    for key in ("logits", "embedding"):
        np.testing.assert_array_equal(before[key], after[key])
    assert len(loaded.losses) == len(model.losses)


@pytest.mark.parametrize("name,shape,kwargs,dim", CASES, ids=IDS)
def test_weight_decay_equals_madry_l2_loss(built, name, shape, kwargs, dim):
    model = built(name)
    kernels = _kernels(model)
    assert len(model.losses) == len(kernels)
    expected = WEIGHT_DECAY * tf.add_n([tf.nn.l2_loss(k) for k in kernels])
    np.testing.assert_allclose(tf.add_n(model.losses), expected, rtol=1e-5)


def test_no_weight_decay_no_losses():
    assert not models.build("small_cnn", 10, (28, 28, 1)).losses


def test_per_image_standardization_matches_tf_image():
    x = _images((8, 8, 3), n=3)
    x[1] = 0.5  # constant image: the 1/sqrt(N) floor on the std applies
    got = models.PerImageStandardization()(x)
    np.testing.assert_allclose(got, tf.image.per_image_standardization(x), rtol=1e-5, atol=1e-6)


def test_wide_resnet_madry_shortcuts_are_parameter_free():
    model = models.build("wide_resnet", 10, (32, 32, 3), depth=10, width=2)
    # Stage 1 widens 16 -> 32 channels at stride 1 by zero padding only; stages 2, 3 pool then pad.
    assert isinstance(model.get_layer("unit_1_0_pad"), models.ChannelZeroPad)
    assert isinstance(model.get_layer("unit_2_0_pool"), keras.layers.AveragePooling2D)
    assert not any("shortcut" in layer.name for layer in model.layers)


def test_bad_arguments_raise():
    with pytest.raises(
        ValueError, match="known models: madry_mnist, mnist_large, mnist_mlp, preact_resnet18"
    ):
        models.build("resnet50", 10, (32, 32, 3))
    with pytest.raises(ValueError, match="depth"):
        models.build("wide_resnet", 10, (32, 32, 3), depth=12)
    with pytest.raises(ValueError, match="input_shape"):
        models.build("small_cnn", 10, (28, 28))
    with pytest.raises(ValueError, match="num_classes"):
        models.build("small_cnn", 1, (28, 28, 1))
    with pytest.raises(ValueError, match="weight_decay"):
        models.build("small_cnn", 10, (28, 28, 1), weight_decay=-1.0)
    with pytest.raises(ValueError, match="standardization"):
        models.build("preact_resnet18", 10, (32, 32, 3), standardization="cifar")


@pytest.mark.slow
def test_small_cnn_learns_mnist5k(mnist5k_arrays):
    images, labels = mnist5k_arrays
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[:4000], order[4000:]
    keras.utils.set_random_seed(0)
    model = models.build("small_cnn", 10, (28, 28, 1))
    # Keras metrics on a dict-output model want targets for every output: loss only here.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )
    model.fit(images[train], {"logits": labels[train]}, batch_size=64, epochs=2, verbose=0)
    logits = model.predict(images[test], batch_size=500, verbose=0)["logits"]
    assert np.mean(np.argmax(logits, -1) == labels[test]) > 0.93  # 0.952 measured (seed 0)


_RECIPE_SCRIPT = """
import dataclasses, glob, json, os, sys
from absl import flags
from tf_metric_robust import cli, data, models
cli.define_train_flags()
FLAGS = flags.FLAGS
built, out = {}, {}
for path in sorted(glob.glob('configs/*.flags')):
    FLAGS.unparse_flags()
    FLAGS(['train', '--flagfile=' + path, '--model_dir=unused'])
    config = cli.recipe_config()
    spec = data.dataset_info(config.dataset)
    key = (config.model, spec.image_shape, spec.num_classes,
           json.dumps(config.model_kwargs, sort_keys=True))
    if key not in built:
        model = models.build(config.model, spec.num_classes, spec.image_shape,
                             weight_decay=config.optimizer.weight_decay, **config.model_kwargs)
        built[key] = (model.count_params(), models.embedding_dim(model))
    fields = dataclasses.asdict(config)
    del fields['settings']
    out[os.path.basename(path)] = dict(
        fields, params=built[key][0], embedding=built[key][1], steps=config.train_steps)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def recipes():
    """Every configs/*.flags parsed with bin/train's flags into its TrainConfig (the fields, as a
    dict) and its model built (real size): the one place the tests parse the flagfiles."""
    import json
    import os

    env = {**os.environ, "PYTHONPATH": support.ROOT, "CUDA_VISIBLE_DEVICES": ""}
    result = support.run_python(_RECIPE_SCRIPT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_recipe_parses_and_builds_its_model(recipes):
    import glob
    import os

    root = support.ROOT
    assert set(recipes) == {os.path.basename(p) for p in glob.glob(f"{root}/configs/*.flags")}
    # The penultimate width of each network: fc1024 (Madry's MNIST net; the authors' large MNIST
    # net, paper Table 5), 64 x width for WRN-34-10, 512 (PreAct ResNet-18), 4 x 512 (bottleneck).
    embedding = {
        "small_cnn": 128,
        "madry_mnist": 1024,
        "mnist_large": 1024,
        "mnist_mlp": 1024,
        "wide_resnet": 640,
        "wide_resnet_swish": 640,
        "preact_resnet18": 512,
        "preact_resnet_tiny": 2048,
    }
    for name, recipe in recipes.items():
        assert recipe["embedding"] == embedding[recipe["model"]], name
        # TLA attacks in BN inference mode (the authors' TLA code); PGD-AT in train mode (Madry);
        # the generated-data recipes with batch statistics kept (DM-Improves-AT).
        expected_bn_mode = "train" if recipe["mode"] == "pgd" else "inference"
        if name.endswith("_generated.flags"):
            expected_bn_mode = "batch"
        assert recipe["attack_bn_mode"] == expected_bn_mode, name
        if recipe["select_best"] != "none":
            assert recipe["validation_examples"] > 0, name


@pytest.mark.slow
def test_mnist_recipe_is_the_papers(recipes):
    mnist = recipes["mnist.flags"]
    assert mnist["model"] == "mnist_large" and mnist["embedding"] == 1024
    assert mnist["optimizer"]["name"] == "adam" and mnist["optimizer"]["learning_rate"] == 1e-4
    assert mnist["optimizer"]["weight_decay"] == 2e-4 and mnist["label_smoothing"] == 0.1
    triplet = mnist["triplet"]
    assert (triplet["margin"], triplet["lambda_triplet"], triplet["lambda_norm"]) == (
        0.05,
        0.5,
        1e-4,
    )
    assert (triplet["negative_pool"], triplet["pool_multiplier"]) == ("extra", 1)
    assert (triplet["positive"], triplet["other_positive"]) == ("other", "data")
    assert triplet["separate_passes"] and mnist["validation_examples"] == 5000  # 55,000 train
    assert (mnist["attack"]["steps"], mnist["attack"]["step_size"], mnist["attack"]["eps"]) == (
        40,
        0.01,
        0.3,
    )
    assert mnist["eval_attack"]["steps"] == 100
    assert recipes["mnist_pgd_at.flags"]["model"] == "madry_mnist"
    # The shipped config's branch: the MLP, no label smoothing, 600k steps, the rest as mnist.flags.
    mlp = recipes["mnist_mlp.flags"]
    assert mlp["model"] == "mnist_mlp" and mlp["label_smoothing"] == 0
    assert mlp["train_steps"] == 600_000
    different = {key for key in mnist if mnist[key] != mlp[key]}
    assert different == {"model", "params", "label_smoothing", "train_steps", "steps"}


@pytest.mark.slow
def test_cifar_recipes_paper_and_code(recipes):
    paper, code = recipes["cifar.flags"], recipes["cifar_80k.flags"]
    assert paper["steps"] == 55_000 and paper["optimizer"]["lr_boundaries"] == [50_000]
    assert paper["optimizer"]["lr_values"] == [0.1, 0.01]
    assert code["steps"] == 80_000 and code["optimizer"]["lr_boundaries"] == [1000, 5000]
    for recipe in (paper, code):
        triplet = recipe["triplet"]
        assert triplet["positive"] == "both" and triplet["other_positive"] == "data"
        assert abs(triplet["positive_noise"] - 8 / 255) < 1e-9
        assert (triplet["negative_pool"], triplet["pool_multiplier"]) == ("extra", 10)
        assert (triplet["margin"], triplet["lambda_triplet"], triplet["lambda_norm"]) == (
            0.03,
            2.0,
            1e-3,
        )
        assert recipe["select_best"] == "pgd" and recipe["eval_round_to_grid"]
        assert recipe["params"] == recipes["cifar_pgd_at.flags"]["params"]
    # Crop shifts as each reference: +-2 px (32 -> 36) for the TLA authors' and Madry's loaders,
    # +-4 px for TRADES, MART and AWP (RandomCrop(32, padding=4)).
    padding = {name: recipe["crop_padding"] for name, recipe in recipes.items()}
    for name in ("cifar.flags", "cifar_80k.flags", "cifar_pgd_at.flags"):
        assert padding[name] == 2, name
    for name in ("trades", "trades_awp", "mart", "mart_awp", "pgd_awp"):
        assert padding[f"cifar_{name}.flags"] == 4, name


@pytest.mark.slow
def test_tiny_imagenet_recipe_is_the_authors(recipes):
    """configs/tiny_imagenet.flags: the authors' Tiny ImageNet TLA settings (their README's
    command and config_imagenet.json), on our bottleneck PreAct ResNet."""
    tiny = recipes["tiny_imagenet.flags"]
    assert (tiny["dataset"], tiny["model"], tiny["mode"]) == (
        "tiny_imagenet",
        "preact_resnet_tiny",
        "tla",
    )
    # model_imagenet_res50.py has no label smoothing; pgd_attack.py:285-286 rounds imagenet too
    assert (tiny["batch_size"], tiny["label_smoothing"], tiny["augment"]) == (20, 0.0, True)
    assert tiny["eval_round_to_grid"]
    optimizer = tiny["optimizer"]
    assert (optimizer["name"], optimizer["momentum"], optimizer["weight_decay"]) == (
        "sgd",
        0.9,
        2e-4,
    )
    assert optimizer["lr_values"] == [0.1, 0.01, 0.001]
    assert (tiny["attack"]["steps"], tiny["eval_attack"]["steps"]) == (7, 10)
    np.testing.assert_allclose(
        [tiny["attack"]["eps"], tiny["attack"]["step_size"], tiny["eval_attack"]["step_size"]],
        [8 / 255, 2 / 255, 2 / 255],
        atol=1e-8,
    )
    triplet = tiny["triplet"]
    assert (triplet["positive"], triplet["margin"], triplet["margin_other"]) == ("both", 0.6, 0.02)
    assert (triplet["negative_pool"], triplet["pool_multiplier"], triplet["distance"]) == (
        "extra",
        1,
        "abs_cosine",
    )
    assert (triplet["lambda_triplet"], triplet["lambda_norm"]) == (0.5, 1e-3)


def _madry_tf1_checkpoint(prefix, units=1, width=1, num_classes=10, scope=""):
    """Writes a TF1 (tf.compat.v1.train.Saver) checkpoint with the variable names and shapes of
    Madry's cifar10_challenge model.py, random weights, and returns a function giving the logits of
    Madry's graph (model.py's forward pass in eval mode) on [0, 255] images."""
    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():

        def variable(name, shape, kind="normal"):
            if kind == "variance":
                value = rng.uniform(0.5, 1.5, shape)
            elif kind == "gamma":
                value = 1 + 0.2 * rng.normal(size=shape)
            else:
                value = rng.normal(size=shape) * (
                    np.sqrt(2.0 / (shape[0] * shape[1] * shape[3])) if len(shape) == 4 else 0.1
                )
            return v1.get_variable(scope + name, initializer=value.astype(np.float32))

        def batch_norm(name, x):  # tf.contrib.layers.batch_norm, is_training=False, eps 1e-3
            channels = [int(x.shape[-1])]
            gamma = variable(f"{name}/BatchNorm/gamma", channels, "gamma")
            beta = variable(f"{name}/BatchNorm/beta", channels)
            mean = variable(f"{name}/BatchNorm/moving_mean", channels)
            var = variable(f"{name}/BatchNorm/moving_variance", channels, "variance")
            return tf.nn.batch_normalization(x, mean, var, beta, gamma, 1e-3)

        def relu(x):
            return tf.where(x < 0.0, 0.1 * x, x)

        def conv(name, x, out, stride):
            kernel = variable(f"{name}/DW", [3, 3, int(x.shape[-1]), out])
            return tf.nn.conv2d(x, kernel, [1, stride, stride, 1], "SAME")

        def residual(name, x, out, stride, activate_before_residual):
            inner = int(x.shape[-1])
            if activate_before_residual:
                x = relu(batch_norm(f"{name}/shared_activation", x))
                orig = x
            else:
                orig = x
                x = relu(batch_norm(f"{name}/residual_only_activation", x))
            x = conv(f"{name}/sub1/conv1", x, out, stride)
            x = relu(batch_norm(f"{name}/sub2", x))
            x = conv(f"{name}/sub2/conv2", x, out, 1)
            if inner != out:
                orig = tf.nn.avg_pool2d(orig, stride, stride, "VALID")
                orig = tf.pad(orig, [[0, 0], [0, 0], [0, 0], [(out - inner) // 2] * 2])
            return x + orig

        images = v1.placeholder(tf.float32, [None, 32, 32, 3])
        x = tf.map_fn(tf.image.per_image_standardization, images)
        x = conv("input/init_conv", x, 16, 1)
        filters = [16, 16 * width, 32 * width, 64 * width]
        for stage, stride in ((1, 1), (2, 2), (3, 2)):
            x = residual(f"unit_{stage}_0", x, filters[stage], stride, stage == 1)
            for i in range(1, units):
                x = residual(f"unit_{stage}_{i}", x, filters[stage], 1, False)
        x = tf.reduce_mean(relu(batch_norm("unit_last", x)), [1, 2])
        dense = variable("logit/DW", [filters[3], num_classes])
        logits = tf.compat.v1.nn.xw_plus_b(x, dense, variable("logit/biases", [num_classes]))
        v1.get_variable("global_step", initializer=np.int64(1000))
        variable("logit/DW/Momentum", [filters[3], num_classes])  # an optimizer slot: ignored
        session = v1.Session(graph=graph)
        session.run(v1.global_variables_initializer())
        v1.train.Saver().save(session, prefix)
    return lambda pixels: session.run(logits, {images: pixels})


@pytest.mark.parametrize("scope", ["", "main_encoder/"])
def test_madry_checkpoint_converts_to_identical_logits(tmp_path, scope):
    """A checkpoint with Madry's model.py names and shapes (WRN-16-2 here, two units per stage)
    becomes our wide_resnet with the same logits: Madry's graph on [0, 255] pixels, ours on the
    same pixels / 255; restored from the converted run folder as --init_checkpoint does."""
    from tf_metric_robust import run_folder
    from tf_metric_robust.models import madry_checkpoint

    madry_logits = _madry_tf1_checkpoint(str(tmp_path / "madry" / "model"), 2, 2, 10, scope)
    pixels = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    want = madry_logits(pixels)
    path, model = madry_checkpoint.convert(str(tmp_path / "madry"), str(tmp_path / "run"))
    assert model.name == "wide_resnet_16_2"
    got = model(pixels / 255.0, training=False)["logits"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.abs(want).max() > 0.1  # logits that a wrong weight would change
    fresh = models.wide_resnet(10, (32, 32, 3), depth=16, width=2)
    restored = run_folder.restore_newest_readable(
        tf.train.Checkpoint(network=fresh), run_folder.checkpoint_dir(str(tmp_path / "run"))
    )
    assert restored == path
    np.testing.assert_allclose(fresh(pixels / 255.0, training=False)["logits"], got, atol=1e-6)


def test_madry_checkpoint_names_what_is_missing(tmp_path):
    from tf_metric_robust.models import madry_checkpoint

    prefix = str(tmp_path / "other")
    tf.train.Checkpoint(w=tf.Variable(1.0)).write(prefix)
    with pytest.raises(ValueError, match="not a Madry WideResNet checkpoint"):
        madry_checkpoint.load(prefix)
