"""The losses half of training.AdversarialTrainer: a batch split into its parts and the
per-example losses of each mode (natural, pgd, tla, trades, mart), shared by train_step and
test_step.

PGD-AT (Madry et al. 2018): CE on the adversarial images. TLA (Mao et al., NeurIPS 2019, arXiv
1909.00900): that CE plus lambda_triplet times the authors' triplet term (tla_loss.TripletTerm);
with base 'trades' (ours) the term is added to the TRADES objective instead. TRADES (Zhang et al.
2019) and MART (Wang et al. 2020): losses.trades_loss / mart_loss on a clean and an adversarial
pass, each with its own BN statistics (trades.py:73-82, mart.py:32-40).
"""

from typing import NamedTuple, Optional

import keras
import tensorflow as tf

from tf_metric_robust import losses
from tf_metric_robust.config.training import KL_MODES
from tf_metric_robust.tla_loss import forward_passes


class Batch(NamedTuple):
    """An input batch split into its parts (pool and other positives: TLA only, else None)."""

    images: tf.Tensor
    labels: tf.Tensor
    pool_images: Optional[tf.Tensor] = None
    pool_labels: Optional[tf.Tensor] = None
    other_images: Optional[tf.Tensor] = None


class Losses(NamedTuple):
    """compute_losses' result: per-example total [N], per-example logs, and the logits."""

    total: tf.Tensor
    logs: dict
    clean_logits: Optional[tf.Tensor]
    adversarial_logits: Optional[tf.Tensor]


class ModeLosses:
    """Mixin of AdversarialTrainer: the mode's losses on a batch.

    Reads the trainer's network, mode, base, beta, label_smoothing, num_classes, triplet (a
    TripletConfig), triplet_term (TLA only), trades_objective and its `_seed(root)`.
    """

    def _cross_entropy(self, labels, logits):
        one_hot = tf.one_hot(labels, self.num_classes)
        return keras.losses.categorical_crossentropy(
            one_hot,
            tf.cast(logits, tf.float32),
            from_logits=True,
            label_smoothing=self.label_smoothing,
        )

    def compute_losses(
        self,
        images,
        labels,
        adversarial,
        training,
        pool_images=None,
        pool_labels=None,
        other_images=None,
    ):
        """Losses (per-example total and logs, logits), shared by train_step and test_step."""
        logs = {}
        clean_logits = adversarial_logits = None
        if self.mode == "natural":
            clean_logits = self.network(images, training=training)["logits"]
            ce = total = self._cross_entropy(labels, clean_logits)
        elif self.mode == "pgd":
            adversarial_logits = self.network(adversarial, training=training)["logits"]
            ce = total = self._cross_entropy(labels, adversarial_logits)
        elif self.mode in KL_MODES:
            # Clean and adversarial passes, each with its own BN statistics, in training mode.
            clean_out, adversarial_out = forward_passes(
                self.network, [images, adversarial], training, self.triplet.separate_passes
            )
            clean_logits, adversarial_logits = clean_out["logits"], adversarial_out["logits"]
        else:
            term = self.triplet_term(
                images,
                adversarial,
                labels,
                training=training,
                seed=self._seed,
                pool_images=pool_images,
                pool_labels=pool_labels,
                other_images=other_images,
                need_clean=self.trades_objective,
            )
            clean_logits, adversarial_logits = term.clean_logits, term.adversarial_logits
            logs.update(
                triplet_loss=term.triplet,
                positive_distance=term.positive_distance,
                negative_distance=term.negative_distance,
                embedding_norm=tf.norm(tf.cast(term.positive_embedding, tf.float32), axis=-1),
            )
            if not self.trades_objective:
                # CE on the adversarial images only (config train_flag_adv_only, lines 382-389).
                ce = total = self._cross_entropy(labels, adversarial_logits)
        if self.mode in KL_MODES or self.trades_objective:
            loss_fn = losses.mart_loss if self.mode == "mart" else losses.trades_loss
            total = loss_fn(labels, clean_logits, adversarial_logits, beta=self.beta)
            # TRADES' CE is on the clean images, MART's on the adversarial ones.
            ce = self._cross_entropy(
                labels, adversarial_logits if self.mode == "mart" else clean_logits
            )
            logs["robust_loss"] = total - ce  # what the mode adds to its CE
        if self.mode == "tla":
            # lambda_triplet weighs each whole term, norm part included (lines 372, 376).
            total = total + self.triplet.lambda_triplet * logs["triplet_loss"]
        logs["ce_loss"] = ce
        return Losses(total, logs, clean_logits, adversarial_logits)

    def _unpack(self, data, training):
        """The Batch of an input: (images, labels), or ((images, other_images), labels) from
        data.train_dataset(other_positives=True); the extra TLA pool split off when training."""
        images, labels = data[0], data[1]
        other_images = None
        if isinstance(images, (tuple, list)):
            images, other_images = images
        elif training and self._needs_other_images():
            raise ValueError(
                "triplet other_positive='data' needs ((images, other_images), labels) "
                "batches: data.train_dataset(..., other_positives=True)"
            )
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
        if not (training and self.mode == "tla" and self.triplet.negative_pool == "extra"):
            return Batch(images, labels, other_images=other_images)
        # The input pipeline delivers batch * (1 + pool_multiplier) images: batch, then pool.
        batch = tf.shape(images)[0] // (1 + self.triplet.pool_multiplier)
        if other_images is not None:
            other_images = other_images[:batch]
        return Batch(images[:batch], labels[:batch], images[batch:], labels[batch:], other_images)

    def _needs_other_images(self):
        return (
            self.mode == "tla"
            and self.triplet.mining == "paper"
            and self.triplet.positive in ("other", "both")
            and self.triplet.other_positive == "data"
        )
