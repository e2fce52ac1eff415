"""ONNX export (export/onnx.py, bin/export --format=onnx) served by ONNX Runtime, a second engine:
its outputs equal the SavedModel's for every model family and batch size, the detector's score
included; ONNX Runtime's own errors on a wrong input; versioned folders; a run's weight EMA; and
the ONNX -> PyTorch conversion of the AutoAttack conformance check (tools/)."""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import export, models, run_folder
from tf_metric_robust.training import ema
from tf_metric_robust.config import UserError
from tf_metric_robust.export import onnx as onnx_export

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
TOLERANCE = 1e-4  # max abs difference of logits and embeddings, ONNX Runtime vs the SavedModel
# Every model family, on tiny inputs (and the ResNets narrow) so that each converts in seconds.
FAMILIES = {
    "small_cnn": ((12, 12, 1), {}),
    "madry_mnist": ((12, 12, 1), {}),
    "mnist_large": ((8, 8, 1), {}),
    "wide_resnet": ((16, 16, 3), {"depth": 10, "width": 1}),
    "preact_resnet_tiny": ((16, 16, 3), {"width": 4, "blocks": (1, 1, 1, 1)}),
}
BATCHES = (0, 1, 9)


def _images(n, shape, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, *shape)).astype(np.float32)


def _randomise_batch_norm(network, rng):
    """Moving statistics and affine parameters far from their initial values: a graph that used
    batch statistics (training mode) or skipped a normalisation would not match."""
    count = 0
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_mean.shape
            layer.gamma.assign(rng.uniform(0.5, 1.5, size))
            layer.beta.assign(rng.normal(0.0, 0.2, size))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, size))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size))
            count += 1
    return count


def _session(path):
    return ort.InferenceSession(
        os.path.join(path, export.ONNX_FILE), providers=["CPUExecutionProvider"]
    )


def _run(session, images):
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images})))


def _served(loaded, images):
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    return {name: value.numpy() for name, value in out.items()}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, image shape, ONNX Runtime session, loaded SavedModel) of one model family, built
    and exported both ways once per module."""
    name = request.param
    shape, kwargs = FAMILIES[name]
    keras.utils.set_random_seed(0)
    network = models.build(name, 10, shape, **kwargs)
    if name not in ("small_cnn", "madry_mnist"):  # the networks with batch norm
        assert _randomise_batch_norm(network, np.random.default_rng(1)) > 0
    folder = str(tmp_path_factory.mktemp(name))
    saved = export.export_saved_model(network, os.path.join(folder, "saved_model"), warmup=False)
    path = export.export_onnx(network, os.path.join(folder, "onnx"))
    return name, shape, _session(path), tf.saved_model.load(saved)


@pytest.mark.parametrize("batch", BATCHES)
def test_onnx_runtime_serves_what_the_saved_model_serves(family, batch):
    name, shape, session, loaded = family
    images = _images(batch, shape, seed=batch)
    got, expected = _run(session, images), _served(loaded, images)
    assert set(got) == set(onnx_export.OUTPUTS) == set(expected)
    for output in onnx_export.OUTPUTS:
        assert got[output].shape == expected[output].shape, (name, output)
        assert got[output].dtype == expected[output].dtype, (name, output)
    if batch == 0:
        return
    # Outputs of a few units or more: 1e-4 is a float32 tolerance, not a loose one.
    assert np.abs(expected["logits"]).max() > 0.1
    for output in ("logits", "embedding"):
        difference = np.abs(got[output] - expected[output]).max()
        assert difference <= TOLERANCE, (name, output, difference)
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(got["classes"], expected["classes"])


def test_batch_norm_runs_in_inference_mode(family):
    """Each image's outputs do not depend on the rest of its batch (batch statistics would)."""
    _, shape, session, _ = family
    images = _images(9, shape, seed=3)
    together = _run(session, images)["logits"]
    alone = np.concatenate([_run(session, images[i : i + 1])["logits"] for i in range(9)])
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-5)


def test_the_graph_has_one_image_input_with_a_dynamic_batch(family):
    _, shape, session, _ = family
    (images,) = session.get_inputs()
    assert (images.name, images.type) == ("images", "tensor(float)")
    assert images.shape == ["N", *shape]
    assert [output.name for output in session.get_outputs()] == list(onnx_export.OUTPUTS)
    outputs = {output.name: output for output in session.get_outputs()}
    assert outputs["logits"].shape == ["N", 10]
    assert outputs["classes"].type == "tensor(int64)"
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata[onnx_export.METADATA_OUTPUTS]) == list(onnx_export.OUTPUTS)


@pytest.fixture(scope="module")
def with_detectors(tmp_path_factory):
    """small_cnn exported both ways with each detector (fitted on random images): (shape,
    {detector: (session, loaded SavedModel, record)})."""
    shape = (12, 12, 1)
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, shape)
    reference = _images(200, shape, seed=7)
    labels = np.arange(200) % 10
    exports = {}
    for kind in ("gaussian", "knn"):
        detector = export.make_detector(network, reference, labels, detector=kind, k=5)
        record = {**detector.describe(), "threshold": 1.25}
        folder = str(tmp_path_factory.mktemp(kind))
        saved = export.export_saved_model(
            network, os.path.join(folder, "saved_model"), detector=detector, warmup=False
        )
        path = export.export_onnx(
            network, os.path.join(folder, "onnx"), detector=detector, record=record
        )
        exports[kind] = (path, _session(path), tf.saved_model.load(saved), record)
    return shape, exports


@pytest.mark.parametrize("kind", ["gaussian", "knn"])
def test_detection_score_converts_and_equals_the_saved_models(with_detectors, kind):
    shape, exports = with_detectors
    path, session, loaded, record = exports[kind]
    for batch in BATCHES + (300,):  # 300: more than one chunk of the detector's Loop
        images = _images(batch, shape, seed=10 + batch)
        got, expected = _run(session, images), _served(loaded, images)
        assert set(got) == set(expected) == {*onnx_export.OUTPUTS, "detection_score"}
        assert got["detection_score"].shape == (batch,)
        if batch:
            # Gaussian scores are -log densities of a few hundred: float32 rounding is ~3e-5.
            np.testing.assert_allclose(
                got["detection_score"], expected["detection_score"], rtol=1e-6, atol=1e-6
            )
    assert [output.name for output in session.get_outputs()][-1] == "detection_score"
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata[onnx_export.METADATA_DETECTOR]) == record
    with open(os.path.join(path, export.ONNX_DETECTOR_FILE)) as f:
        assert json.load(f) == record


def test_a_wrong_shape_or_dtype_gets_onnx_runtimes_error(with_detectors):
    """ONNX has no assertions: ONNX Runtime refuses a wrong dtype, rank or size itself, with a
    message naming the input (docs/serving.md shows them); values are not checked."""
    shape, exports = with_detectors
    session = exports["gaussian"][1]
    cases = {
        "Unexpected input data type. Actual: (tensor(double)) , expected: (tensor(float))": (
            np.zeros((2, *shape), np.float64)
        ),
        "Unexpected input data type. Actual: (tensor(uint8)) , expected: (tensor(float))": (
            np.zeros((2, *shape), np.uint8)
        ),
        "Invalid rank for input: images Got: 3 Expected: 4": np.zeros(shape, np.float32),
        "Got invalid dimensions for input: images for the following indices\n index: 1 Got: 28 "
        "Expected: 12": np.zeros((2, 28, 28, 1), np.float32),
    }
    for message, images in cases.items():
        with pytest.raises(Exception, match="INVALID_ARGUMENT") as error:
            session.run(None, {"images": images})
        assert message in str(error.value), str(error.value)
    with pytest.raises(ValueError, match=r"Required inputs \(\[.images.\]\) are missing"):
        session.run(None, {"x": np.zeros((1, *shape), np.float32)})


def test_versions_are_published_like_the_saved_models(tmp_path):
    network = models.build("small_cnn", 10, (12, 12, 1))
    base = str(tmp_path / "onnx")
    first = export.export_onnx(network, base)
    second = export.export_onnx(network, base)
    assert (first, second) == (os.path.join(base, "1"), os.path.join(base, "2"))
    assert sorted(os.listdir(base)) == ["1", "2"]  # no temporary folder left
    assert os.listdir(first) == [export.ONNX_FILE]  # no detector, no detector.json
    with pytest.raises(UserError, match="version 2 already exists"):
        export.export_onnx(network, base, version=2)
    with pytest.raises(UserError, match="local folder"):
        export.export_onnx(network, "gs://bucket/models")


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """A run folder (mnist5k, small_cnn) whose checkpoint holds raw weights and a different EMA:
    (model_dir, raw network, averaged network)."""
    model_dir = str(tmp_path_factory.mktemp("ema_run"))
    with open(os.path.join(model_dir, "recipe.json"), "w") as f:
        json.dump({"dataset": "mnist5k", "model": "small_cnn", "model_kwargs": {}}, f)
    keras.utils.set_random_seed(0)
    raw = models.build("small_cnn", 10, (28, 28, 1))
    averaged = models.build("small_cnn", 10, (28, 28, 1))  # other random weights: the "EMA"
    average = ema.WeightAverage(raw, decay=0.5)
    average.copy_to(raw)  # averages := raw weights, then set them to the other network's
    for value, weight in zip(average.averages, averaged.weights):
        value.assign(weight)
    checkpoint = tf.train.Checkpoint(network=raw, **{run_folder.EMA_CHECKPOINT_KEY: average})
    tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, "checkpoints"), 1).save(7)
    return model_dir, raw, averaged


def test_bin_export_onnx_serves_the_runs_ema_weights_and_detector(ema_run, mnist5k_data_dir):
    model_dir, raw, averaged = ema_run
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "bin", "export"),
            f"--model_dir={model_dir}",
            "--format=onnx",
            f"--data_dir={mnist5k_data_dir}",
            "--detection_reference=200",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    path = os.path.join(model_dir, "onnx", "1")
    assert path in result.stdout
    assert "ONNX outputs: logits, probabilities, classes, embedding, detection_score" in (
        result.stdout
    )
    assert sorted(os.listdir(path)) == [export.ONNX_DETECTOR_FILE, export.ONNX_FILE]
    assert not os.path.exists(os.path.join(model_dir, "saved_model"))
    session = _session(path)
    images = _images(6, (28, 28, 1))
    got = _run(session, images)
    expected = averaged(images, training=False)["logits"].numpy()
    assert np.abs(got["logits"] - expected).max() <= TOLERANCE
    assert np.abs(got["logits"] - raw(images, training=False)["logits"].numpy()).max() > 1e-2
    with open(os.path.join(path, export.ONNX_DETECTOR_FILE)) as f:
        record = json.load(f)
    assert record["detector"] == "gaussian" and record["reference"]["examples"] == 200
    assert record["checkpoint"].endswith("ckpt-7")
    assert record["flag_when"] == "detection_score > threshold"
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata[onnx_export.METADATA_DETECTOR]) == record
    assert got["detection_score"].shape == (6,) and np.all(np.isfinite(got["detection_score"]))


def test_onnx_to_pytorch_conversion_keeps_the_logits(with_detectors, tmp_path):
    """tools/autoattack_conformance.py's model for the reference AutoAttack: the ONNX graph's
    logits (detector pruned) in PyTorch, NCHW input, equal to ONNX Runtime's."""
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("onnx2torch") is None:  # imported by the tool (torchvision)
        pytest.skip("onnx2torch is not installed (pip install -e '.[conformance]')")
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import autoattack_conformance as conformance
    finally:
        sys.path.pop(0)
    shape, exports = with_detectors
    path, session, _, _ = exports["gaussian"]
    module = conformance.torch_classifier(os.path.join(path, export.ONNX_FILE))
    images = _images(9, shape, seed=5)
    with torch.no_grad():
        logits = module(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(logits, _run(session, images)["logits"], atol=TOLERANCE)
    # Gradients flow to the input (the reference's APGD and FAB need them).
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    module(x).sum().backward()
    assert float(x.grad.abs().sum()) > 0
