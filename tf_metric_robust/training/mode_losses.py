"""The per-example loss of each training mode on a batch: what the trainer's one train_step (and
test_step) varies by mode.

PGD-AT (Madry et al. 2018): CE on the adversarial images. TLA (Mao et al., NeurIPS 2019, arXiv
1909.00900): that CE plus lambda_triplet times the authors' triplet term (triplet.TripletTerm);
with base 'trades' (ours) the term is added to the TRADES objective instead. TRADES (Zhang et al.
2019) and MART (Wang et al. 2020): losses.trades_loss / mart_loss on a clean and an adversarial
pass, each with its own BN statistics (trades.py:73-82, mart.py:32-40).
"""

import dataclasses
from typing import NamedTuple, Optional

import keras
import tensorflow as tf

from tf_metric_robust import losses
from tf_metric_robust.config import TripletConfig
from tf_metric_robust.config.training import KL_MODES
from tf_metric_robust.training.triplet import forward_passes, other_positives_from_data


class Batch(NamedTuple):
    """An input batch split into its parts (pool and other positives: TLA only, else None)."""

    images: tf.Tensor
    labels: tf.Tensor
    pool_images: Optional[tf.Tensor] = None
    pool_labels: Optional[tf.Tensor] = None
    other_images: Optional[tf.Tensor] = None


class Losses(NamedTuple):
    """A mode's loss on a batch: per-example total [N], per-example logs, and the logits."""

    total: tf.Tensor
    logs: dict
    clean_logits: Optional[tf.Tensor]
    adversarial_logits: Optional[tf.Tensor]


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """What a mode's loss reads of the trainer's settings (see AdversarialTrainer's arguments)."""

    mode: str
    num_classes: int
    label_smoothing: float = 0.0
    beta: float = 6.0  # weight of the KL term of trades, mart and tla with base 'trades'
    base: str = "pgd"
    triplet: TripletConfig = dataclasses.field(default_factory=TripletConfig)

    @property
    def trades_objective(self):
        """Whether the loss is TRADES' objective: mode 'trades', or TLA with base 'trades'."""
        return self.mode == "trades" or self.base == "trades"


def split_batch(data, *, training, mode, triplet):
    """The Batch of an input: (images, labels), or ((images, other_images), labels) from
    data.train_dataset(other_positives=True); the extra TLA pool split off when training."""
    images, labels = data[0], data[1]
    other_images = None
    if isinstance(images, (tuple, list)):
        images, other_images = images
    elif training and other_positives_from_data(mode, triplet):
        raise ValueError(
            "triplet other_positive='data' needs ((images, other_images), labels) "
            "batches: data.train_dataset(..., other_positives=True)"
        )
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
    if not (training and mode == "tla" and triplet.negative_pool == "extra"):
        return Batch(images, labels, other_images=other_images)
    # The input pipeline delivers batch * (1 + pool_multiplier) images: batch, then pool.
    batch = tf.shape(images)[0] // (1 + triplet.pool_multiplier)
    if other_images is not None:
        other_images = other_images[:batch]
    return Batch(images[:batch], labels[:batch], images[batch:], labels[batch:], other_images)


def cross_entropy(labels, logits, settings):
    """Per-example CE [N] in float32, with the settings' label smoothing."""
    one_hot = tf.one_hot(labels, settings.num_classes)
    return keras.losses.categorical_crossentropy(
        one_hot,
        tf.cast(logits, tf.float32),
        from_logits=True,
        label_smoothing=settings.label_smoothing,
    )


def natural_loss(network, batch, adversarial, training, settings):
    """Natural training: CE on the clean images (`adversarial` is not used)."""
    del adversarial
    clean_logits = network(batch.images, training=training)["logits"]
    ce = cross_entropy(batch.labels, clean_logits, settings)
    return Losses(ce, {"ce_loss": ce}, clean_logits, None)


def pgd_loss(network, batch, adversarial, training, settings):
    """PGD-AT (Madry et al. 2018): CE on the adversarial images."""
    adversarial_logits = network(adversarial, training=training)["logits"]
    ce = cross_entropy(batch.labels, adversarial_logits, settings)
    return Losses(ce, {"ce_loss": ce}, None, adversarial_logits)


def kl_loss(network, batch, adversarial, training, settings):
    """TRADES or MART (settings.mode) on a clean and an adversarial pass, each with its own BN
    statistics."""
    clean_out, adversarial_out = forward_passes(
        network, [batch.images, adversarial], training, settings.triplet.separate_passes
    )
    clean_logits, adversarial_logits = clean_out["logits"], adversarial_out["logits"]
    total, ce = _kl_objective(batch.labels, clean_logits, adversarial_logits, settings)
    # robust_loss: what the mode adds to its CE.
    return Losses(
        total, {"robust_loss": total - ce, "ce_loss": ce}, clean_logits, adversarial_logits
    )


def tla_loss(batch, adversarial, training, settings, *, term, seed):
    """TLA: CE on the adversarial images (or, with base 'trades', the TRADES objective) plus
    lambda_triplet times the triplet term.

    Args:
      term: the trainer's triplet.TripletTerm (it runs the network's passes).
      seed: seeds.py root name -> int [2] stateless key of this step and replica.
    """
    out = term(
        batch.images,
        adversarial,
        batch.labels,
        training=training,
        seed=seed,
        pool_images=batch.pool_images,
        pool_labels=batch.pool_labels,
        other_images=batch.other_images,
        need_clean=settings.trades_objective,
    )
    logs = dict(
        triplet_loss=out.triplet,
        positive_distance=out.positive_distance,
        negative_distance=out.negative_distance,
        embedding_norm=tf.norm(tf.cast(out.positive_embedding, tf.float32), axis=-1),
    )
    if settings.trades_objective:
        total, ce = _kl_objective(batch.labels, out.clean_logits, out.adversarial_logits, settings)
        logs["robust_loss"] = total - ce
    else:
        # CE on the adversarial images only (train_flag_adv_only; train_update_fast_triplet.py
        # lines 382-389).
        ce = total = cross_entropy(batch.labels, out.adversarial_logits, settings)
    # lambda_triplet weighs each whole term, norm part included (train_update_fast_triplet.py
    # lines 372, 376).
    total = total + settings.triplet.lambda_triplet * logs["triplet_loss"]
    logs["ce_loss"] = ce
    return Losses(total, logs, out.clean_logits, out.adversarial_logits)


# The modes without a triplet term; TLA's loss also takes the term and the seed (tla_loss).
LOSSES = {"natural": natural_loss, "pgd": pgd_loss, **{mode: kl_loss for mode in KL_MODES}}


def _kl_objective(labels, clean_logits, adversarial_logits, settings):
    """(total [N], ce [N]) of TRADES (tla with base 'trades' too) or MART: TRADES' CE is on the
    clean images (label-smoothed as settings say, losses.trades_loss), MART's on the adversarial
    ones."""
    if settings.mode == "mart":  # plain CE: check_mode refuses label smoothing with MART
        total = losses.mart_loss(labels, clean_logits, adversarial_logits, beta=settings.beta)
        return total, cross_entropy(labels, adversarial_logits, settings)
    total = losses.trades_loss(
        labels,
        clean_logits,
        adversarial_logits,
        beta=settings.beta,
        label_smoothing=settings.label_smoothing,
    )
    return total, cross_entropy(labels, clean_logits, settings)
