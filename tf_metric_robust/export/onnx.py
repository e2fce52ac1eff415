"""ONNX export for ONNX Runtime (and other ONNX engines): one graph, the serving outputs.

The graph is traced from the same network call as the SavedModel's serving_default (inference
mode: batch norm uses its moving statistics) and converted by tf2onnx, the converter behind
Keras 3's `model.export(format="onnx")` on the TensorFlow backend. Its one input `images` is a
float32 [N, H, W, C] batch in [0, 1] with a dynamic N; its outputs are serving_default's. The
detector's score converts as a Loop over the same chunks as in TensorFlow (tf.map_fn), so the
graph serves `detection_score` too; the detector's record (threshold, reference) is in the
model's metadata and in detector.json beside it. ONNX has no assertions: ONNX Runtime checks the
input's dtype, rank and sizes, not its values (see docs/serving.md).
"""

import json
import logging
import os

import tensorflow as tf

from tf_metric_robust import atomic_io, run_folder
from tf_metric_robust.config import UserError
from tf_metric_robust.export.detector import export_detector
from tf_metric_robust.export.serving import serving_outputs
from tf_metric_robust.export.folders import check_destination, refuse_existing, write_version

ONNX_FILE = "model.onnx"
ONNX_DETECTOR_FILE = "detector.json"  # the detector's record, beside model.onnx
# Opset 17: supported by tf2onnx 1.17, every ONNX Runtime since 1.13 and onnx2torch (which the
# conformance check with the reference AutoAttack uses); 18 changed the reductions' axes inputs.
OPSET = 17
INPUT = "images"
OUTPUTS = ("logits", "probabilities", "classes", "embedding")
DETECTION_OUTPUT = "detection_score"
METADATA_OUTPUTS = "tf_metric_robust.outputs"
METADATA_DETECTOR = "tf_metric_robust.detector"


def onnx_function(network, detector=None):
    """(tf.function, its input TensorSpec) that the ONNX graph is converted from: images float32
    [None, H, W, C] -> serving_default's outputs (logits, probabilities, classes, embedding and,
    with a detector, detection_score), the network called with training=False."""
    image_shape = tuple(int(d) for d in network.input_shape[1:])
    spec = tf.TensorSpec([None, *image_shape], tf.float32, name=INPUT)

    def serve(images):
        outputs = network(images, training=False)
        logits = tf.cast(outputs["logits"], tf.float32)
        embedding = tf.cast(outputs["embedding"], tf.float32)
        return serving_outputs(logits, embedding, detector)

    return tf.function(serve, input_signature=[spec]), spec


def output_names(detector=None):
    """The graph's outputs in order: OUTPUTS, then detection_score with a detector."""
    return OUTPUTS + ((DETECTION_OUTPUT,) if detector is not None else ())


def to_onnx(network, detector=None, *, record=None, opset=OPSET):
    """The onnx.ModelProto of `network` (and `detector`), checked by onnx.checker; `record` (the
    detector's, as in detector.json) goes into its metadata under METADATA_DETECTOR."""
    try:
        import onnx
        import tf2onnx
    except ImportError as error:
        raise UserError(
            f"ONNX export needs tf2onnx and onnx ({error}); install them: pip install -e '.[onnx]'"
        ) from None
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # one INFO line per rewrite otherwise
    function, spec = onnx_function(network, detector)
    model, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset)
    names = output_names(detector)
    graph_outputs = {output.name: output for output in model.graph.output}
    if sorted(graph_outputs) != sorted(names):
        raise RuntimeError(f"tf2onnx named the outputs {sorted(graph_outputs)}, not {names}")
    # The documented order (tf2onnx sorts the outputs by name), the batch dimension named N.
    ordered = [onnx.ValueInfoProto() for _ in names]
    for copy, name in zip(ordered, names):
        copy.CopyFrom(graph_outputs[name])
    del model.graph.output[:]
    model.graph.output.extend(ordered)
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"  # tf2onnx names the dynamic batch size unk__<n>
    model.doc_string = f"{network.name}: images float32 [N, H, W, C] in [0, 1] -> " + ", ".join(
        names
    )
    metadata = {METADATA_OUTPUTS: json.dumps(list(names))}
    if record is not None:
        metadata[METADATA_DETECTOR] = json.dumps(record, sort_keys=True)
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def export_onnx(network, export_dir, *, detector=None, record=None, version=None, opset=OPSET):
    """Writes `network` (with `detector`'s score) as export_dir/<version>/model.onnx, and
    `record` as detector.json beside it, atomically; returns the version folder.

    The folders are the SavedModel's (folders.py): `version` defaults to the largest existing
    one plus 1, an existing version is never overwritten, and a version is renamed into place
    complete (the layout of a Triton model repository's ONNX model).
    """
    check_destination(export_dir, version)
    model = to_onnx(network, detector, record=record, opset=opset)

    def write(folder):
        with open(os.path.join(folder, ONNX_FILE), "wb") as f:
            f.write(model.SerializeToString())
        if record is not None:
            atomic_io.write_json_atomic(os.path.join(folder, ONNX_DETECTOR_FILE), record)

    return write_version(export_dir, version, write)


def export_onnx_run(config):
    """bin/export --format=onnx: the latest checkpoint of a run (its weight EMA if it has one)
    with the detector of ExportConfig `config`; returns (version folder, checkpoint, outputs)."""
    if not os.path.isdir(config.model_dir):
        raise UserError(f"--model_dir {config.model_dir} does not exist")
    if config.version is not None:  # refuse before the slow part
        refuse_existing(config.resolved_export_dir, config.version)
    network, recipe, checkpoint = run_folder.load_network(config.model_dir)
    try:
        detector, record = export_detector(
            network, recipe["dataset"], config, checkpoint=checkpoint
        )
    except (ValueError, MemoryError) as error:  # e.g. one reference per class, detection_k
        raise UserError(str(error)) from None
    path = export_onnx(
        network,
        config.resolved_export_dir,
        detector=detector,
        record=record,
        version=config.version,
    )
    return path, checkpoint, output_names(detector)
