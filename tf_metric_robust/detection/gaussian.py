"""Class-conditional Gaussian detector (Zheng & Hong, NeurIPS 2018; TLA paper section 5.3)."""

import numpy as np
import tensorflow as tf
from sklearn.covariance import ledoit_wolf_shrinkage

from tf_metric_robust.config import COVARIANCES, covariance_problem
from tf_metric_robust.detection.common import checked_query, checked_reference, map_chunks


def shrunk_covariance(centered, shrinkage="ledoit_wolf"):
    """(1 - s) S + s mu I for centered rows [n, d] (float64), and s; S = X^T X / n (MLE), mu =
    trace(S) / d; s from Ledoit & Wolf (2004) through sklearn.covariance.ledoit_wolf_shrinkage,
    or a fixed float."""
    centered = np.asarray(centered, np.float64)
    n, d = centered.shape
    s = (
        float(ledoit_wolf_shrinkage(centered, assume_centered=True))
        if shrinkage == "ledoit_wolf"
        else float(shrinkage)
    )
    covariance = centered.T @ centered / n
    mu = np.trace(covariance) / d
    return (1.0 - s) * covariance + s * mu * np.eye(d), s


class GaussianDetector(tf.Module):
    """Class-conditional Gaussians on clean embeddings; score = -max_c log N(e; mu_c, Sigma_c).

    covariance 'per_class' (default): one full covariance per class, as Zheng & Hong (one density
    model per class, fitted on that class's training outputs) and the TLA paper ("a Gaussian per
    class") did; 'tied': one pooled within-class covariance (Lee et al. 2018's LDA form), for
    many classes with few references each (Tiny ImageNet: 200 classes, 25 references each).
    Each covariance is shrunk toward (trace / D) I by Ledoit-Wolf (2004) (or a fixed `shrinkage`
    in [0, 1]), which keeps it invertible when D >= references per class (640-d or 2048-d from
    500 images), plus a 1e-9 relative ridge for the degenerate case. Fitted in float64 NumPy;
    Cholesky factors stored as float64 tf.Variables; densities computed in float64.
    """

    def __init__(
        self,
        reference_embeddings,
        reference_labels,
        *,
        covariance="per_class",
        shrinkage="ledoit_wolf",
        num_classes=None,
        chunk_size=256,
        name=None,
    ):
        super().__init__(name=name)
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if shrinkage != "ledoit_wolf" and not 0.0 <= float(shrinkage) <= 1.0:
            raise ValueError(f"shrinkage must be 'ledoit_wolf' or in [0, 1], got {shrinkage!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        embeddings, labels, num_classes = checked_reference(
            np.asarray(reference_embeddings, np.float64),
            np.asarray(reference_labels).astype(np.int64),
            num_classes,
        )
        dim = embeddings.shape[1]
        counts = np.bincount(labels, minlength=num_classes)
        # Memory (config.MAX_COVARIANCE_BYTES) and references per class, as the config layer
        # checks them: one rule for the detector and the choice of its covariance.
        problem = covariance_problem(covariance, num_classes, dim, counts)
        if problem:
            raise ValueError(problem)
        means = np.stack([embeddings[labels == c].mean(axis=0) for c in range(num_classes)])
        centered = embeddings - means[labels]
        if covariance == "per_class":
            fitted = [
                shrunk_covariance(centered[labels == c], shrinkage) for c in range(num_classes)
            ]
        else:
            fitted = [shrunk_covariance(centered, shrinkage)]
        whitening, half_log_dets = [], []
        for sigma, _ in fitted:
            ridge = 1e-9 * max(np.trace(sigma) / dim, 1e-30)
            cholesky = np.linalg.cholesky(sigma + ridge * np.eye(dim))  # Sigma = L L^T
            whitening.append(np.linalg.inv(cholesky))  # L^-1: |L^-1 (e - mu)|^2 = Mahalanobis^2
            half_log_dets.append(np.sum(np.log(np.diag(cholesky))))  # 0.5 log det Sigma
        whitening = np.stack(whitening)
        self.covariance, self.dim, self.num_classes = covariance, dim, num_classes
        self.chunk_size = int(chunk_size)
        self.shrinkage = shrinkage
        self.shrinkages = [s for _, s in fitted]
        self.means = tf.Variable(means, trainable=False, name="means")
        self.whitening = tf.Variable(whitening, trainable=False, name="whitening")
        # L_c^-1 mu_c: the per-class shift of the whitened embedding.
        self.whitened_means = tf.Variable(
            np.einsum("kij,cj->ci", whitening, means)
            if covariance == "tied"
            else np.einsum("cij,cj->ci", whitening, means),
            trainable=False,
            name="whitened_means",
        )
        self.log_normalizers = tf.Variable(
            np.broadcast_to(np.asarray(half_log_dets), [num_classes])
            + 0.5 * dim * np.log(2.0 * np.pi),
            trainable=False,
            name="log_normalizers",
        )

    def log_densities(self, embeddings):
        """log N(e; mu_c, Sigma_c) float64 [N, C] for embeddings [N, D] (differentiable)."""
        e = tf.cast(tf.ensure_shape(embeddings, [None, self.dim]), tf.float64)
        if self.covariance == "tied":
            # |W e - W mu_c|^2 expanded, so memory is [N, C] (float64 keeps the cancellation small).
            whitened = tf.matmul(e, self.whitening[0], transpose_b=True)  # [N, D]
            squared = (
                tf.reduce_sum(tf.square(whitened), axis=1, keepdims=True)
                - 2.0 * tf.matmul(whitened, self.whitened_means, transpose_b=True)
                + tf.reduce_sum(tf.square(self.whitened_means), axis=1)[tf.newaxis]
            )
            squared = tf.maximum(squared, 0.0)
        else:
            whitened = tf.einsum("cij,nj->nci", self.whitening, e) - self.whitened_means
            squared = tf.reduce_sum(tf.square(whitened), axis=2)  # [N, C]
        return -0.5 * squared - self.log_normalizers[tf.newaxis]

    def confidence(self, embeddings, predicted_labels):
        """max_c log-density / D, float32 [N]: the differentiable quantity an adaptive attack
        raises (= -score / D; per dimension so attack weights carry over between models)."""
        del predicted_labels  # the paper's confidence is the best class, whatever the prediction
        best = tf.reduce_max(self.log_densities(embeddings), axis=1)
        return tf.cast(best / self.dim, tf.float32)

    def score(self, embeddings, predicted_labels):
        """Detection scores float32 [N] = -max_c log N(e; mu_c, Sigma_c); predictions [N] are
        checked (the interface of KnnDetector) but not used."""
        embeddings, predicted_labels = checked_query(
            embeddings, predicted_labels, self.dim, self.num_classes
        )
        return map_chunks(
            lambda chunk, _: tf.cast(-tf.reduce_max(self.log_densities(chunk), axis=1), tf.float32),
            embeddings,
            predicted_labels,
            self.chunk_size,
        )

    def describe(self):
        """JSON-ready settings (for reports and the export's detector.json)."""
        return {
            "detector": "gaussian",
            "covariance": self.covariance,
            "dim": self.dim,
            "num_classes": self.num_classes,
            "shrinkage": self.shrinkage,
            "shrinkage_values": [round(s, 6) for s in self.shrinkages],
            "score": "-max_c log N(embedding; mu_c, Sigma_c)",
        }
