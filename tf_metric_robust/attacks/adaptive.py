"""Adaptive attack on a detector: PGD that fools the classifier AND keeps the detector quiet.

A detector evaluated only against attacks that ignore it proves little (Carlini & Wagner, "Adversarial
examples are not easily detected", AISec 2017; Athalye et al., ICML 2018). This attack maximises

    min(margin(z, y), kappa) + weight * detector.confidence(embedding, argmax z)

as `attacks.pgd`'s loss (the shared loop of gradient_loop.py): the CW margin (max_{j != y} z_j - z_y, > 0 iff
misclassified) capped at `kappa` stops pushing once the image is misclassified with margin kappa,
so the steps then go to the detector's confidence (GaussianDetector: the best class log-density
per dimension, i.e. -score / D; KnnDetector: mean cosine to the predicted class's nearest
references). Differentiable end to end through the network and the detector.
"""

import dataclasses

import tensorflow as tf

from tf_metric_robust.attacks import _plumbing, gradient, objectives


@dataclasses.dataclass(frozen=True)
class DetectorObjective:
    """The per-example objective above; hashable, so the compiled attack is cached per detector,
    weight and kappa. `outputs` = (logits [N, C], embedding [N, D])."""

    detector: object
    weight: float
    kappa: float

    def __post_init__(self):
        if not (self.weight >= 0 and self.kappa > 0):
            raise ValueError(
                f"weight must be >= 0 and kappa > 0, got {self.weight} and {self.kappa}"
            )
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "kappa", float(self.kappa))

    def __call__(self, outputs, labels):
        if not (isinstance(outputs, (tuple, list)) and len(outputs) == 2):
            raise TypeError("the adaptive attack's model_fn must return (logits, embedding)")
        logits, embedding = outputs
        logits = tf.cast(logits, tf.float32)
        predicted = tf.argmax(logits, axis=-1)
        misclassify = tf.minimum(objectives.margin(logits, labels), self.kappa)
        if self.weight == 0:
            return misclassify
        return misclassify + self.weight * self.detector.confidence(embedding, predicted)


def _detector_pgd(model_fn, x, y, *, detector, weight, kappa, **settings):
    """`attacks.pgd` with the objective above as its loss (runs `adaptive_detector`)."""
    return gradient.pgd(model_fn, x, y, loss=DetectorObjective(detector, weight, kappa), **settings)


@_plumbing.arguments_to(_detector_pgd)
def adaptive_detector(
    model_fn,
    x,
    y,
    *,
    detector,
    eps,
    step_size,
    steps,
    weight=1.0,
    kappa=2.0,
    random_start=True,
    norm="linf",
    clip_min=0.0,
    clip_max=1.0,
    seed=None,
):
    """PGD against classifier + detector in the linf/l2 eps-ball around x.

    Args: model_fn maps images to (logits [N, C], embedding [N, D]) (e.g. ModelFns.outputs);
    detector: a GaussianDetector or KnnDetector (anything with `confidence(embedding,
    predictions)`); weight: the trade-off c (0 = capped-margin PGD that ignores the detector);
    kappa: the margin cap in logits; the rest as `attacks.pgd`. Returns adversarial images, same
    shape and dtype as x, inside the ball and [clip_min, clip_max].
    """
