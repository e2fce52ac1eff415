"""bin/export and export.py: signatures, fresh-process reload, saved_model_cli, input checks,
atomic versioned export, TF Serving warm-up records, detection on PGD inputs (real MNIST-5k), the
detector's covariance rule and the export at the end of training."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

import support
from tf_metric_robust import detection, distribute, export, models, training
from tf_metric_robust.attacks import pgd
from tf_metric_robust.config import (
    AttackConfig,
    EvalConfig,
    ExportConfig,
    TrainConfig,
    UserError,
    covariance_problem,
    detector_settings,
)
from tf_metric_robust.evaluation import detection_protocol
from tf_metric_robust.evaluation.model_fns import ModelFns
from tf_metric_robust.models import layers
from tf_metric_robust.data.mnist5k_builder import split_indices
from tf_metric_robust.training import finish

pytestmark = pytest.mark.slow  # end to end: bin/ subprocesses or full runs (make test-fast skips)

ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
OUTPUTS = ("logits", "probabilities", "classes", "embedding", "detection_score")


class _Classifier(keras.Model):
    """Logits of a {'logits', 'embedding'} network, for plain `fit`."""

    def __init__(self, network):
        super().__init__(name="classifier")
        self.network = network

    def call(self, images, training=False):
        return self.network(images, training=training)["logits"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist5k_arrays, mnist5k_data_dir):
    """A small_cnn trained one epoch on mnist5k's train split, saved as a run, then `bin/export`.

    Returns (network, model_dir, version folder, test images, test labels, bin/export result).
    """
    images, labels = mnist5k_arrays
    train, test = split_indices(labels)  # the tfds builder's split: the reference is train
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1))
    classifier = _Classifier(network)
    classifier.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    order = np.random.default_rng(0).permutation(train)
    classifier.fit(images[order], labels[order], batch_size=64, epochs=1, verbose=0)
    model_dir = str(tmp_path_factory.mktemp("run"))
    support.write_run_folder(model_dir, network, step=63)
    # kNN with k = 10 (the default detector is the Gaussian, tested in test_detection.py): the
    # demo model is naturally trained, and fewer neighbours separate it better.
    result = support.run(
        "bin/export",
        f"--model_dir={model_dir}",
        f"--data_dir={mnist5k_data_dir}",
        "--detector=knn",
        "--detection_k=10",
        env=ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    path = os.path.join(model_dir, "saved_model", "1")
    return network, model_dir, path, images[test], labels[test], result


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[2])


# Run in a fresh process per oneDNN setting: an empty batch and each bad input on every signature.
SERVING_CHECKS = """
import json, sys, numpy as np, tensorflow as tf
from tf_metric_robust import export
model = tf.saved_model.load(export.latest_version(sys.argv[1]))
result = {"empty": {}, "refused": {}}
for name, dtype in (("serving_default", tf.float32), ("serving_uint8", tf.uint8),
                    ("logits_and_embedding", tf.float32)):
    out = model.signatures[name](images=tf.zeros([0, 28, 28, 1], dtype))
    result["empty"][name] = {k: [list(v.shape), v.dtype.name] for k, v in out.items()}
    bad = {"float32": [np.zeros((28, 28, 1)), np.full((2, 28, 28, 1), 255.0),
                       np.full((1, 28, 28, 1), np.nan), np.zeros((2, 32, 32, 1))],
           "uint8": [np.zeros((1, 28, 28, 3)), np.zeros((28, 28, 1))]}[dtype.name]
    refused = 0
    for images in bad:
        try:
            model.signatures[name](images=tf.constant(images, dtype))
        except tf.errors.InvalidArgumentError:
            refused += 1
    result["refused"][name] = [refused, len(bad)]
json.dump(result, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def outside_runs(exported):
    """Starts a fresh Python process and `saved_model_cli run` on the export, in the background:
    each pays a TensorFlow import, so they overlap with the in-process tests. `_finished(runs,
    name)` waits for one and returns (returncode, stderr, output path)."""
    _, model_dir, path, images, _, _ = exported
    probe = os.path.join(model_dir, "probe.npy")
    np.save(probe, images[::50])
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "from tf_metric_robust import export\n"
        "model = tf.saved_model.load(export.latest_version(sys.argv[1]))\n"
        "out = model.signatures['serving_default'](images=tf.constant(np.load(sys.argv[2])))\n"
        "np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})\n"
    )
    fresh_output = os.path.join(model_dir, "fresh.npz")
    cli_output = os.path.join(model_dir, "cli_out")
    saved_model_cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    evaluate_output = os.path.join(model_dir, "evaluate_saved_model", "report.json")
    commands = {
        "fresh": (
            [sys.executable, "-c", script, os.path.dirname(path), probe, fresh_output],
            fresh_output,
            ENV,
        ),
        "saved_model_cli": (
            [
                saved_model_cli,
                "run",
                "--dir",
                path,
                "--tag_set",
                "serve",
                "--signature_def",
                "serving_default",
                "--inputs",
                f"images={probe}",
                "--outdir",
                cli_output,
            ],
            cli_output,
            ENV,
        ),
        # The default attack list, the sanity checks (persistent tapes) and detection
        # through a SavedModel's signatures, in a fresh process.
        "evaluate": (
            support.command(
                "bin/evaluate",
                f"--saved_model={path}",
                "--dataset=mnist5k",
                "--num_examples=20",
                "--batch_size=20",
                "--steps=3",
                "--step_size=0.1",
                "--eps_sweep=0,0.3",
                "--steps_sweep=1,3",
                "--detection",
                "--detection_reference=200",
                "--detection_k=10",
                "--detection_eps=0.3",
                "--detection_steps=3",
                "--detection_weights=1",
                f"--output={evaluate_output}",
                "--noprogress",
                f"--data_dir={os.path.join(model_dir, 'tfds')}",
            ),
            os.path.dirname(evaluate_output),
            ENV,
        ),
    }
    # oneDNN's convolution rejects a zero-size batch; the signatures must not depend on
    # the kernel library, so the serving checks run under both settings in fresh processes.
    for onednn in ("0", "1"):
        output = os.path.join(model_dir, f"serving_checks_onednn{onednn}.json")
        commands[f"onednn{onednn}"] = (
            [sys.executable, "-c", SERVING_CHECKS, os.path.dirname(path), output],
            output,
            dict(ENV, TF_ENABLE_ONEDNN_OPTS=onednn),
        )
    runs = {
        name: {
            "process": subprocess.Popen(
                command,
                cwd=support.ROOT,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
            "output": output,
        }
        for name, (command, output, env) in commands.items()
    }
    yield runs
    for run in runs.values():
        if run["process"].poll() is None:
            run["process"].kill()
            run["process"].communicate()


def _finished(runs, name):
    run = runs[name]
    if "stderr" not in run:
        _, run["stderr"] = run["process"].communicate(timeout=900)
    return run["process"].returncode, run["stderr"], run["output"]


def _expected(network, images):
    out = network(images, training=False)
    logits = out["logits"].numpy()
    return {
        "logits": logits,
        "probabilities": tf.nn.softmax(logits).numpy(),
        "classes": logits.argmax(1),
        "embedding": out["embedding"].numpy(),
    }


def test_bin_export_writes_a_tf_serving_version_folder(exported, loaded, outside_runs):
    del outside_runs  # requested first so the background processes start now
    network, model_dir, path, _, _, result = exported
    assert path in result.stdout
    assert os.listdir(os.path.join(model_dir, "saved_model")) == ["1"]  # no temporary left
    for name in ("saved_model.pb", "variables", export.WARMUP_FILE):
        assert os.path.exists(os.path.join(path, name)), name
    assert export.versions(os.path.join(model_dir, "saved_model")) == [1]
    assert export.latest_version(os.path.join(model_dir, "saved_model")) == path
    assert set(loaded.signatures) == set(export.SIGNATURES)
    for name in ("serving_default", "serving_uint8"):
        assert set(loaded.signatures[name].structured_outputs) == set(OUTPUTS)
    assert set(loaded.signatures[export.GRADIENT_SIGNATURE].structured_outputs) == {
        "logits",
        "embedding",
    }
    # The reference (mnist5k train split: 400 per class, all of it for the default 5000) is in it.
    assert loaded.detector.reference_labels.shape == (4000,)
    # Each weight is stored once: the network's variables plus the detector's reference.
    weights = sum(int(np.prod(v.shape)) for v in network.variables)
    stored = sum(
        int(np.prod(shape))
        for name, shape in tf.train.list_variables(os.path.join(path, "variables", "variables"))
        if name.endswith("VARIABLE_VALUE")
    )
    # ... and bin/export's record: the 5%-FPR threshold and the description (scalars).
    assert stored == weights + 4000 * 128 + 4000 + 2


def _run_like_tf_serving(path, signature_name, images):
    """Runs a signature through the graph-mode SavedModel loader that TF Serving and
    saved_model_cli use (a Session over the MetaGraph, variables restored by name)."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        signature = meta_graph.signature_def[signature_name]
        names = sorted(signature.outputs)
        values = session.run(
            [signature.outputs[n].name for n in names], {signature.inputs["images"].name: images}
        )
    return dict(zip(names, values))


def test_graph_mode_loader_of_tf_serving_finds_every_variable(exported):
    network, _, path, images, _, _ = exported
    out = _run_like_tf_serving(path, "serving_uint8", np.round(images[:8] * 255).astype(np.uint8))
    expected = _expected(network, np.round(images[:8] * 255) / np.float32(255))
    np.testing.assert_allclose(out["logits"], expected["logits"], rtol=1e-5, atol=1e-5)
    assert set(out) == set(OUTPUTS)


def test_network_built_under_a_two_replica_strategy_exports(tmp_path, mnist5k_arrays):
    strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        network = models.build("small_cnn", 10, (28, 28, 1))
    path = export.export_saved_model(network, str(tmp_path / "serving"), warmup=False)
    images = mnist5k_arrays[0][:4]
    out = _run_like_tf_serving(path, "serving_default", images)
    np.testing.assert_allclose(
        out["logits"], _expected(network, images)["logits"], rtol=1e-5, atol=1e-5
    )
    assert "detection_score" not in out  # no reference given


def test_uint8_and_float_signatures_agree(exported, loaded):
    pixels = np.round(exported[3][:32] * 255).astype(np.uint8)
    from_float = loaded.signatures["serving_default"](images=tf.constant(pixels / np.float32(255)))
    from_uint8 = loaded.signatures["serving_uint8"](images=tf.constant(pixels))
    for name in OUTPUTS:
        np.testing.assert_allclose(
            from_uint8[name], from_float[name], rtol=1e-5, atol=1e-5, err_msg=name
        )


BAD_FLOAT_INPUTS = [
    ("one image, no batch axis", np.zeros((28, 28, 1), np.float32), r"shape \[N, 28, 28, 1\]"),
    # The declared [None, 28, 28, 1] lets the graph optimiser drop the rank check: TF's own
    # shape check answers instead.
    (
        "rank 5",
        np.zeros((2, 28, 28, 1, 1), np.float32),
        r"\[2,28,28,1,1\] is not compatible with expected shape \[\?,28,28,1\]",
    ),
    ("scalar", np.float32(0.5), r"shape \[N, 28, 28, 1\].*got shape\] \[\]"),
    ("wrong size", np.zeros((2, 32, 32, 1), np.float32), r"got shape\] \[2 32 32 1\]"),
    ("wrong channels", np.zeros((2, 28, 28, 3), np.float32), r"got shape\] \[2 28 28 3\]"),
    ("0-255 scale", np.full((2, 28, 28, 1), 255.0, np.float32), r"in \[0, 1\].*max\] \[255"),
    ("negative", np.full((2, 28, 28, 1), -0.1, np.float32), r"in \[0, 1\].*got min\] \[-0.1"),
    (
        "NaN",
        np.where(np.eye(28)[None, :, :, None] > 0, np.nan, 0.5).astype(np.float32),
        "NaN or Inf",
    ),
    ("Inf", np.full((1, 28, 28, 1), np.inf, np.float32), "NaN or Inf"),
]


def test_bad_inputs_get_a_clear_error_from_the_signature(loaded):
    serve = loaded.signatures["serving_default"]
    for what, images, message in BAD_FLOAT_INPUTS:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serve(images=tf.constant(images))
            pytest.fail(f"accepted {what}")
    serve_uint8 = loaded.signatures["serving_uint8"]
    for images in (np.zeros((28, 28, 1), np.uint8), np.zeros((1, 28, 28, 3), np.uint8)):
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=r"shape \[N, 28, 28, 1\] \(NHWC\) of uint8 in \[0, 255\]",
        ):
            serve_uint8(images=tf.constant(images))
    assert serve(images=tf.zeros([0, 28, 28, 1]))["classes"].shape == (0,)  # empty batch is fine


def test_crash_mid_export_leaves_previous_version_and_no_partial_version(
    exported, tmp_path, monkeypatch
):
    network, model_dir, path, images, _, _ = exported
    base = str(tmp_path / "serving")
    shutil.copytree(os.path.dirname(path), base)
    real_save = tf.saved_model.save

    def crashing_save(obj, export_dir, *args, **kwargs):
        os.makedirs(os.path.join(export_dir, "variables"))
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"half a graph")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tf.saved_model, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        export.export_saved_model(network, base)
    assert os.listdir(base) == ["1"]  # the temporary folder was removed

    # A hard kill skips the clean-up: the partial folder stays, but hidden and not a version.
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)
    with pytest.raises(OSError, match="simulated"):
        export.export_saved_model(network, base)
    leftovers = [name for name in os.listdir(base) if name != "1"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".")
    assert export.versions(base) == [1] and export.latest_version(base) == os.path.join(base, "1")
    first = tf.saved_model.load(export.latest_version(base)).signatures["serving_default"]
    np.testing.assert_allclose(
        first(images=tf.constant(images[:8]))["logits"],
        _expected(network, images[:8])["logits"],
        rtol=1e-5,
        atol=1e-5,
    )

    # The next export after a gap (7 exists) is 8; an existing version is never overwritten.
    monkeypatch.setattr(tf.saved_model, "save", real_save)
    os.makedirs(os.path.join(base, "7"))
    assert export.export_saved_model(network, base, warmup=False) == os.path.join(base, "8")
    assert export.latest_version(base) == os.path.join(base, "8")
    with pytest.raises(UserError, match="version 8 already exists"):
        export.export_saved_model(network, base, version=8)


def _prediction_log_class():
    """tensorflow.serving.PredictionLog's fields that warm-up uses, built from descriptors (the
    tensorflow_serving package is not installed); parsing uses protobuf's own decoder."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from tensorflow.core.framework import tensor_pb2

    pool, added = descriptor_pool.DescriptorPool(), set()

    def add(file_descriptor):
        if file_descriptor.name in added:
            return
        for dependency in file_descriptor.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        pool.Add(proto)
        added.add(file_descriptor.name)

    add(tensor_pb2.DESCRIPTOR)
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="warmup_test.proto",
        package="warmup_test",
        syntax="proto3",
        dependency=[tensor_pb2.DESCRIPTOR.name],
    )

    def message(name, fields, parent=None):
        new = (parent.nested_type if parent else proto.message_type).add(name=name)
        for field_name, number, kind, type_name, label in fields:
            new_field = new.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                new_field.type_name = type_name
        return new

    one, many = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    text, sub = field.TYPE_STRING, field.TYPE_MESSAGE
    message("ModelSpec", [("name", 1, text, "", one), ("signature_name", 3, text, "", one)])
    request = message(
        "PredictRequest",
        [
            ("model_spec", 1, sub, ".warmup_test.ModelSpec", one),
            ("inputs", 2, sub, ".warmup_test.PredictRequest.InputsEntry", many),
        ],
    )
    entry = message(
        "InputsEntry",
        [("key", 1, text, "", one), ("value", 2, sub, ".tensorflow.TensorProto", one)],
        request,
    )
    entry.options.map_entry = True
    message("PredictLog", [("request", 1, sub, ".warmup_test.PredictRequest", one)])
    message("PredictionLog", [("predict_log", 6, sub, ".warmup_test.PredictLog", one)])
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("warmup_test.PredictionLog"))


def test_warmup_file_holds_prediction_logs_for_both_signatures(exported, loaded):
    path = os.path.join(exported[2], export.WARMUP_FILE)
    prediction_log = _prediction_log_class()
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    requests = {}
    for record in records:
        log = prediction_log.FromString(record)
        assert log.SerializeToString() == record  # canonical encoding, byte for byte
        request = log.predict_log.request
        requests[request.model_spec.signature_name] = {
            name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()
        }
    assert set(requests) == set(export.SIGNATURES)
    for name, dtype in (("serving_default", np.float32), ("serving_uint8", np.uint8)):
        images = requests[name]["images"]
        assert images.dtype == dtype and images.shape == (1, 28, 28, 1)
        # A warm-up request must be valid input for its signature.
        assert loaded.signatures[name](images=tf.constant(images))["classes"].shape == (1,)


def test_detection_score_separates_clean_from_pgd_inputs(exported, loaded):
    network, _, _, images, labels, _ = exported
    x, y = images[::5], labels[::5]  # 200 test digits, 20 per class
    adversarial = pgd(
        lambda v: network(v, training=False)["logits"],
        tf.constant(x),
        tf.constant(y),
        eps=0.3,
        step_size=0.05,
        steps=10,
        seed=tf.constant([1, 2], tf.int64),
    )
    serve = loaded.signatures["serving_default"]
    clean, attacked = serve(images=tf.constant(x)), serve(images=adversarial)
    assert np.mean(clean["classes"].numpy() == y) > 0.85
    assert np.mean(attacked["classes"].numpy() == y) < 0.2
    scores = np.r_[attacked["detection_score"].numpy(), clean["detection_score"].numpy()]
    is_adversarial = np.arange(scores.size) < len(x)
    auc = detection.roc_auc(scores, is_adversarial)
    print(f"detection ROC AUC clean vs PGD (eps 0.3, 10 steps), natural small_cnn: {auc:.3f}")
    assert auc > 0.65


def test_bin_export_user_errors_are_one_line(tmp_path):
    result = support.run("bin/export", f"--model_dir={tmp_path}/none", env=ENV, timeout=300)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_signatures_declare_the_image_batch_shape(exported, loaded):
    """saved_model_cli and TF Serving read images as [-1, 28, 28, 1], not of unknown rank."""
    for name, dtype in (
        ("serving_default", tf.float32),
        ("serving_uint8", tf.uint8),
        (export.GRADIENT_SIGNATURE, tf.float32),
    ):
        args, kwargs = loaded.signatures[name].structured_input_signature
        assert args == () and set(kwargs) == {"images"}, name
        assert kwargs["images"].shape.as_list() == [None, 28, 28, 1], name
        assert kwargs["images"].dtype == dtype, name
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(exported[2], "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    for name in export.SIGNATURES:  # what `saved_model_cli show` prints
        shape = saved.meta_graphs[0].signature_def[name].inputs["images"].tensor_shape
        assert not shape.unknown_rank and [d.size for d in shape.dim] == [-1, 28, 28, 1], name


def _covariance(settings, dataset, num_classes, dim, counts=None):
    options = detector_settings(
        settings, dataset, num_classes=num_classes, embedding_dim=dim, counts=counts
    )
    return options["covariance"]


def test_one_covariance_rule_for_export_training_and_evaluation(exported):
    exporting = ExportConfig(model_dir="run")  # bin/export's and bin/train's export's settings
    # The Tiny ImageNet recipe's 200 classes of 2048-d: per-class factors would take 6.7 GB.
    assert "exceed 1024 MiB" in covariance_problem("per_class", 200, 2048)
    assert _covariance(exporting, "fake:tiny_imagenet", 200, 2048) == "tied"
    assert _covariance(exporting, "tiny_imagenet", 200, 64) == "tied"  # the dataset's default
    assert _covariance(exporting, "cifar10", 10, 640, [500] * 10) == "per_class"  # the paper's
    assert _covariance(exporting, "image_folder:/x", 3, 16, [1, 2, 2]) == "tied"
    assert covariance_problem("tied", 200, 2048, [25] * 200) is None
    assert "more references than classes" in covariance_problem("tied", 3, 16, [1, 1, 1])
    assert "needs >= 1 references" in covariance_problem("tied", 3, 16, [0, 2, 2])
    # A covariance that was asked for is kept (the detector then says why it cannot be fitted).
    asked = ExportConfig(model_dir="run", detection_covariance="per_class")
    assert _covariance(asked, "fake:tiny_imagenet", 200, 2048) == "per_class"
    # bin/evaluate: resolve leaves the covariance to the same rule.
    resolved = EvalConfig(detection=True, eps=8 / 255, step_size=2 / 255, steps=10).resolve(
        "tiny_imagenet"
    )
    assert resolved.detection_covariance is None
    assert _covariance(resolved, "tiny_imagenet", 200, 64) == "tied"
    # ... and its detectors follow it: one reference of class 0 rules out per-class covariances.
    network, _, _, images, labels, _ = exported
    rows = np.concatenate([np.flatnonzero(labels == c)[: 30 if c else 1] for c in range(10)])
    detectors = detection_protocol.build_detectors(
        ModelFns(network),
        (images[rows], labels[rows]),
        EvalConfig(detection=True, detection_reference=len(rows)),
        dataset="mnist5k",
    )
    assert detectors["gaussian"].covariance == "tied"


def _tiny_2048(num_classes, input_shape, **kwargs):
    """A network as small as a test wants with the Tiny ImageNet recipe's 2048-d embedding."""
    del kwargs
    images = keras.Input(shape=input_shape, name="images")
    x = keras.layers.Conv2D(16, 3, strides=4, activation="relu", name="conv")(images)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    embedding = keras.layers.ReLU(name="embedding")(keras.layers.Dense(2048, name="fc")(x))
    return keras.Model(images, layers.classifier_outputs(embedding, num_classes), name="tiny_2048")


def _one_step_run(model_dir, dataset, model, batch_size, **fields):
    """The TrainConfig of one natural training step whose evaluations see `batch_size` images."""
    attack = AttackConfig(eps=8 / 255, step_size=4 / 255, steps=1)
    return TrainConfig(
        model_dir=str(model_dir),
        dataset=dataset,
        model=model,
        mode="natural",
        batch_size=batch_size,
        train_steps=1,
        eval_every=1,
        eval_examples=batch_size,
        final_eval_examples=batch_size,
        eval_batch_size=batch_size,
        attack=attack,
        eval_attack=attack,
        **fields,
    )


def test_tiny_imagenet_run_ends_with_a_tied_detector_at_2048_dims(tmp_path):
    """The end of a configs/tiny_imagenet.flags run (200 classes, 2048-d embedding) on fake
    data: a per-class detector cannot be fitted there; the export fits the tied one."""
    config = _one_step_run(tmp_path / "run", "fake:tiny_imagenet", "tiny_2048", 8)
    own_settings = finish.export_settings
    lines = []
    with (
        mock.patch.dict(models.MODELS, {"tiny_2048": _tiny_2048}),
        # 1000 references instead of 5000 (about 25 s less of Ledoit-Wolf on 2048-d rows); the
        # 200 per-class 2048-d covariances exceed the memory limit at any reference size.
        mock.patch.object(
            finish,
            "export_settings",
            lambda run_config: dataclasses.replace(
                own_settings(run_config), detection_reference=1000
            ),
        ),
    ):
        training.train(config, progress=lines.append)
    path = export.latest_version(os.path.join(config.model_dir, "saved_model"))
    with open(os.path.join(path, export.DETECTOR_FILE)) as f:
        record = json.load(f)
    assert (record["covariance"], record["dim"], record["num_classes"]) == ("tied", 2048, 200)
    assert record["reference"]["examples"] > 900 and len(record["reference"]["per_class"]) == 200
    loaded = tf.saved_model.load(path)
    assert record["threshold"] == pytest.approx(float(loaded.detector.threshold.numpy()))
    out = loaded.signatures["serving_default"](images=tf.zeros([2, 64, 64, 3]))
    assert out["embedding"].shape == (2, 2048) and np.isfinite(out["detection_score"]).all()
    assert not [line for line in lines if "detector" in line], lines


def _write_image(path, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(tf.io.encode_jpeg(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).numpy())


def test_one_image_per_class_run_exports_without_the_detector_and_reruns(tmp_path):
    """No Gaussian can be fitted on one reference per class: the finished run still writes its
    SavedModel, without detection_score, says so in one line, and a re-run does not fail."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("ant", "bee", "cat"):
            _write_image(str(tmp_path / "folder" / split / name / "0.jpg"), rng)
    config = _one_step_run(
        tmp_path / "run",
        f"image_folder:{tmp_path / 'folder'}",
        "small_cnn",
        3,
        model_kwargs={"embedding_dim": 16},
    )
    lines = []
    training.train(config, progress=lines.append)
    notes = [line for line in lines if "without a detector" in line]
    assert len(notes) == 1 and "\n" not in notes[0], lines
    assert "more references than classes" in notes[0]
    base = os.path.join(config.model_dir, "saved_model")
    assert export.versions(base) == [1]
    assert not os.path.exists(os.path.join(base, "1", export.DETECTOR_FILE))
    outputs = tf.saved_model.load(os.path.join(base, "1")).signatures["serving_default"]
    assert set(outputs.structured_outputs) == set(OUTPUTS) - {"detection_score"}
    training.train(config, progress=lines.append)  # finished and exported: nothing to redo
    assert export.versions(base) == [1]


def test_training_exports_what_bin_export_records(mnist5k_run_config):
    """The SavedModel of a training run holds bin/export's detector, threshold and record."""
    config = mnist5k_run_config(
        batch_size=50,
        train_steps=2,
        examples=100,
        attack=AttackConfig(eps=0.3, step_size=0.1, steps=1),
        mode="natural",
        eval_every=2,
    )
    training.train(config)
    path = export.latest_version(os.path.join(config.model_dir, "saved_model"))
    with open(os.path.join(path, export.DETECTOR_FILE)) as f:
        record = json.load(f)
    loaded = tf.saved_model.load(path)
    assert record["threshold"] == pytest.approx(float(loaded.detector.threshold.numpy()))
    assert json.loads(loaded.detector.description.numpy().decode()) == record
    assert (record["detector"], record["covariance"]) == ("gaussian", "per_class")
    assert record["threshold_images"]["examples"] == 1000  # mnist5k's test split
    # bin/export of the finished run: the same weights, reference, threshold, record.
    again, _ = export.export_run(
        ExportConfig(model_dir=config.model_dir, data_dir=config.data_dir, warmup=False)
    )
    with open(os.path.join(again, export.DETECTOR_FILE)) as f:
        assert json.load(f) == record


def test_check_export_says_before_training_when_no_detector_fits(tmp_path):
    def network(dim, num_classes):
        images = keras.Input(shape=(2, 2, 1), name="images")
        flat = keras.layers.Flatten()(images)
        embedding = keras.layers.ReLU(name="embedding")(keras.layers.Dense(dim)(flat))
        return keras.Model(images, layers.classifier_outputs(embedding, num_classes))

    config = TrainConfig(model_dir=str(tmp_path), dataset="fake:tiny_imagenet")
    lines = []
    finish.check_export(config, network(12_000, 200), lines.append)  # 1.07 GiB tied
    assert len(lines) == 1 and "no detector" in lines[0] and "exceed 1024 MiB" in lines[0]
    lines.clear()
    finish.check_export(config, network(2048, 200), lines.append)  # tied fits
    assert lines == []


# Last: these wait for the background processes started by the first test.


def test_reload_in_a_fresh_process_matches_the_training_model(exported, outside_runs):
    network, _, _, images, _, _ = exported
    returncode, stderr, output = _finished(outside_runs, "fresh")
    assert returncode == 0, stderr[-3000:]
    fresh = np.load(output)
    for name, value in _expected(network, images[::50]).items():
        np.testing.assert_allclose(fresh[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    assert fresh["detection_score"].shape == (20,) and np.isfinite(fresh["detection_score"]).all()


def test_saved_model_cli_run(exported, outside_runs):
    network, _, _, images, _, _ = exported
    returncode, stderr, outdir = _finished(outside_runs, "saved_model_cli")
    assert returncode == 0, stderr[-3000:]
    expected = _expected(network, images[::50])
    np.testing.assert_allclose(
        np.load(os.path.join(outdir, "logits.npy")), expected["logits"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(np.load(os.path.join(outdir, "classes.npy")), expected["classes"])
    assert np.load(os.path.join(outdir, "detection_score.npy")).shape == (20,)


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_empty_batches_and_bad_inputs_on_either_kernel_library(exported, outside_runs, onednn):
    """oneDNN's convolution rejects a zero-size batch: every signature answers an empty batch
    with empty outputs of the right shapes and dtypes, and still refuses bad input."""
    returncode, stderr, output = _finished(outside_runs, f"onednn{onednn}")
    assert returncode == 0, stderr[-3000:]
    with open(output) as f:
        result = json.load(f)
    expected = {
        "logits": [[0, 10], "float32"],
        "probabilities": [[0, 10], "float32"],
        "classes": [[0], "int64"],
        "embedding": [[0, 128], "float32"],
        "detection_score": [[0], "float32"],
    }
    for name in ("serving_default", "serving_uint8"):
        assert result["empty"][name] == expected, name
    assert result["empty"][export.GRADIENT_SIGNATURE] == {
        k: expected[k] for k in ("logits", "embedding")
    }
    for name, (refused, total) in result["refused"].items():
        assert refused == total, name


def _data_ancestors(op):
    """Every op whose output feeds `op` through data edges (control edges not followed)."""
    seen, stack = set(), [op]
    while stack:
        for tensor in stack.pop().inputs:
            if tensor.op.name not in seen:
                seen.add(tensor.op.name)
                stack.append(tensor.op)
    return seen


@pytest.mark.parametrize("signature", ["serving_default", export.GRADIENT_SIGNATURE])
def test_the_network_consumes_the_output_of_the_input_checks(exported, signature):
    """The checks must be data ancestors of the network, not control edges an
    optimiser could reorder: the branch that runs the network takes the checked tensor."""
    network = exported[0]
    module = export.ServingModule(network)
    graph = module.signatures()[signature].get_concrete_function().graph
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}

    def asserts(function_name):  # Assert in a function or in the branches of its conds
        return any(
            node.op == "Assert"
            or node.op in ("If", "StatelessIf")
            and any(
                asserts(node.attr[branch].func.name) for branch in ("then_branch", "else_branch")
            )
            for node in library[function_name].node_def
        )

    conds = [op for op in graph.get_operations() if op.type in ("If", "StatelessIf")]
    checks = [op for op in conds if asserts(op.get_attr("else_branch").name)]
    runs_network = [op for op in conds if op not in checks]
    assert len(checks) == 3 and len(runs_network) == 1  # shape, finite, range; the network
    ancestors = _data_ancestors(runs_network[0])
    assert all(check.name in ancestors for check in checks)


def test_bin_evaluate_on_a_saved_model_of_bin_export(exported, outside_runs):
    """`bin/evaluate --saved_model` on our own export: every default attack, the sanity checks
    and detection run through the export's signatures (a persistent tape through
    serving_default must not end in 'variable without handle data')."""
    returncode, stderr, output_dir = _finished(outside_runs, "evaluate")
    assert returncode == 0, stderr[-3000:]
    reports = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(output_dir)
        for name in names
        if name == "report.json"
    ]
    assert reports, os.listdir(output_dir)
    with open(reports[0]) as f:
        report = json.load(f)
    assert {"fgsm", "pgd", "pgd_cw", "mifgsm"} <= set(report["attacks"]), report["attacks"]
    assert report["model"]["source"] == "saved_model"
    assert report["sanity"]["passed"], report["sanity"]
    assert report["detection"] is not None
