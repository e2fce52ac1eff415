"""Serving throughput: ONNX Runtime vs the SavedModel, images/s at batch 1 and 256, in one run.

Command: `.venv/bin/python bench/onnx_serving.py [--rounds 9] [--threads 0] [--wrn_depth 10]
[--wrn_width 2]` (needs the onnx extra: `pip install -e '.[onnx]'`).

Two networks, built untrained (weights do not change the cost) and exported both ways into a
temporary folder, as bin/export writes them (no detector, so both serve logits, probabilities,
classes and embedding):

  * the demo model: small_cnn on 28x28x1 digits (configs/mnist5k.flags);
  * a reduced WideResNet: wide_resnet --depth/--width on 32x32x3 images (Madry's CIFAR-10
    network, WRN-34-10 in the paper, cut down to fit a CPU run).

Engines: the SavedModel's `serving_default` signature called from Python (tf.saved_model.load;
its input checks of shape, range and finite values included, as TF Serving runs them) and an
ONNX Runtime InferenceSession (CPUExecutionProvider) on model.onnx, each fed the same NumPy batch
and returning NumPy arrays. --threads 0 leaves both engines their default intra-op thread pools
(all cores); --threads k gives each k (TensorFlow's intra-op parallelism, ONNX Runtime's
intra_op_num_threads): on a loaded machine one thread each gives steadier ratios, and its
process-CPU ratio is a fair one (ONNX Runtime's pool threads spin while they wait, which counts
as CPU time). Calls run round by round (interleaved, after a warm-up) so that load changes hit
both engines alike; prints median images/s per engine and the medians of the per-round ratios
ONNX Runtime / SavedModel in wall time (throughput: > 1, ONNX Runtime serves more images per
second) and in process-CPU time (cost per image: < 1, ONNX Runtime spends less).
"""

import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_metric_robust import export, models  # noqa: E402
from timing import interleaved  # noqa: E402

BATCHES = (1, 256)


def engines(network, folder, threads):
    """{engine: images -> outputs} for `network` exported both ways under `folder`."""
    saved = export.export_saved_model(network, os.path.join(folder, "saved_model"), warmup=False)
    onnx_dir = export.export_onnx(network, os.path.join(folder, "onnx"))
    signature = tf.saved_model.load(saved).signatures["serving_default"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        os.path.join(onnx_dir, export.ONNX_FILE), options, providers=["CPUExecutionProvider"]
    )

    def saved_model(images):
        return {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}

    def onnx_runtime(images):
        return session.run(None, {"images": images})

    return {"SavedModel": saved_model, "ONNX Runtime": onnx_runtime}


def measure(name, network, shape, rounds, folder, threads):
    """Prints images/s of each engine and their per-round ratios at every batch size."""
    runs = engines(network, folder, threads)
    rng = np.random.default_rng(0)
    for batch in BATCHES:
        images = rng.uniform(size=(batch, *shape)).astype(np.float32)
        calls = max(1, 256 // batch)  # about 256 images per timed call of either engine
        outputs = {engine: run(images) for engine, run in runs.items()}
        logits = outputs["SavedModel"]["logits"], outputs["ONNX Runtime"][0]
        difference = float(np.abs(logits[0] - logits[1]).max())

        def repeated(run, images=images, calls=calls):
            return lambda: [run(images) for _ in range(calls)]

        times = interleaved({e: repeated(run) for e, run in runs.items()}, rounds, warmups=2)
        rate = {e: [batch * calls / wall for wall, _ in t] for e, t in times.items()}
        ratio = statistics.median(o / s for o, s in zip(rate["ONNX Runtime"], rate["SavedModel"]))
        cpu = statistics.median(
            o[1] / s[1] for o, s in zip(times["ONNX Runtime"], times["SavedModel"])
        )
        print(
            f"{name:<28} batch {batch:>3}: SavedModel {statistics.median(rate['SavedModel']):7.1f}"
            f" img/s, ONNX Runtime {statistics.median(rate['ONNX Runtime']):7.1f} img/s; "
            f"ONNX Runtime / SavedModel: throughput {ratio:.2f}, CPU time {cpu:.2f} "
            f"(logits max abs diff {difference:.1e})",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0: defaults")
    parser.add_argument("--wrn_depth", type=int, default=10)
    parser.add_argument("--wrn_width", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    print(
        f"TensorFlow {tf.__version__}, ONNX Runtime {ort.__version__}, {os.cpu_count()} CPUs, "
        f"intra-op threads {args.threads or 'default'}; medians of {args.rounds} interleaved "
        f"rounds; load average {os.getloadavg()[0]:.1f}"
    )
    keras.utils.set_random_seed(0)
    networks = {
        "small_cnn 28x28x1 (demo)": ((28, 28, 1), models.build("small_cnn", 10, (28, 28, 1))),
        f"wide_resnet {args.wrn_depth}-{args.wrn_width} 32x32x3": (
            (32, 32, 3),
            models.build(
                "wide_resnet", 10, (32, 32, 3), depth=args.wrn_depth, width=args.wrn_width
            ),
        ),
    }
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, (shape, network)) in enumerate(networks.items()):
            measure(
                name, network, shape, args.rounds, os.path.join(folder, str(index)), args.threads
            )


if __name__ == "__main__":
    main()
