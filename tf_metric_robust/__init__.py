"""tf_metric_robust: TLA (Mao et al., NeurIPS 2019, arXiv 1909.00900) for TensorFlow 2 / Keras 3.

Adversarial training with a triplet loss between adversarial and clean penultimate embeddings,
robustness evaluation, and detection of adversarial inputs in the embedding space.
"""

__version__ = "0.1.0"
