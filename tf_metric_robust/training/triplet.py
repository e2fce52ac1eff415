"""TLA's triplet term in a training step: forward passes, positives, negatives (Mao et al.,
NeurIPS 2019, arXiv 1909.00900; columbia/Metric_Learning_Adversarial_Robustness).

For each positive term t the authors add lambda_triplet * ([D(h(x'_a), h(x_p,t)) - D(h(x'_a),
h(x_n)) + margin]_+ + lambda_norm * L_norm) (train_update_fast_triplet.py:366-376, the term
`losses.tla_triplet_loss`); h is the penultimate embedding, x'_a the adversarial anchor, x_p a
clean positive and x_n the most similar clean image of another class. `TripletTerm` builds that
term from a network; the mode's loss (mode_losses.tla_loss) adds the cross-entropy (or the TRADES
objective) and the weight. The positives are the authors': the anchor's own clean image (on
CIFAR-10 with uniform noise, `noisy_positive`) and another clean image of its class, from the
batch or drawn from the data (data/class_index.py).
"""

from typing import NamedTuple, Optional

import tensorflow as tf

from tf_metric_robust import losses

PIXEL_LEVELS = 255.0  # 8-bit images: the [0, 1] grid has steps of 1/255


class TripletOutputs(NamedTuple):
    """What a TLA step computes besides the loss weights (per-example tensors are [N])."""

    adversarial_logits: tf.Tensor
    clean_logits: Optional[tf.Tensor]  # None when no clean pass ran (authors' MNIST step)
    triplet: tf.Tensor  # the sum of the positive terms, norm part inside each
    positive_distance: tf.Tensor  # mean over the positive terms
    negative_distance: tf.Tensor
    positive_embedding: tf.Tensor  # [N, D], the first positive's


class NegativePool(NamedTuple):
    """Clean embeddings to search negatives in: [M, D], labels [M], valid bool [M] or None."""

    embedding: tf.Tensor
    labels: tf.Tensor
    valid: Optional[tf.Tensor] = None


def noisy_positive(images, noise, seed):
    """Clean images + uniform noise in [-noise, noise], rounded to the 1/255 grid, clipped to [0,1].

    The authors' `np.clip(np.rint(x + U(-8, 8)), 0, 255)` on the 0..255 scale, added after the
    attack (train_update_fast_triplet.py:649-651; nat_noise_level 8, config_cifar.json:39), here
    on [0, 1] images with `noise` = 8/255. A pure function of the stateless seed: a resumed run
    draws the same noise.

    Args:
      images: float [N, H, W, C] in [0, 1].
      noise: half-width of the uniform noise on the [0, 1] scale (0 returns `images`).
      seed: int [2] key of the stateless draw.
    """
    if noise == 0:
        return images
    dtype = images.dtype
    images = tf.cast(images, tf.float32)
    draw = tf.random.stateless_uniform(tf.shape(images), seed=seed, minval=-noise, maxval=noise)
    levels = tf.round((images + draw) * PIXEL_LEVELS)
    return tf.cast(tf.clip_by_value(levels, 0.0, PIXEL_LEVELS) / PIXEL_LEVELS, dtype)


def other_positives_from_data(mode, triplet):
    """Whether a run's TLA term takes its other positive from the data (an independent image of
    the class in each batch, data.train_dataset(other_positives=True)) instead of the batch."""
    return (
        mode == "tla"
        and triplet.mining == "paper"
        and triplet.positive in ("other", "both")
        and triplet.other_positive == "data"
    )


def forward_passes(network, batches, training, separate=True):
    """Network outputs for each image batch: one forward pass per batch, each with its own BN
    batch statistics, as the authors call model._encoder once per input
    (train_update_fast_triplet.py:252-273), or, with separate=False, one joint pass."""
    if separate or len(batches) == 1:
        return [network(images, training=training) for images in batches]
    sizes = tf.stack([tf.shape(images)[0] for images in batches])
    outputs = network(tf.concat(batches, 0), training=training)
    parts = {key: tf.split(outputs[key], sizes) for key in ("logits", "embedding")}
    return [{key: parts[key][i] for key in parts} for i in range(len(batches))]


def tfa_metric(distance):
    """Our distance names -> TFA's distance_metric for triplet_semihard_loss (|cos|: a callable)."""
    if distance == "abs_cosine":
        return lambda embeddings: losses.pairwise_distance(embeddings, embeddings, "abs_cosine")
    return {"l2": "L2", "squared_l2": "squared-L2", "cosine": "angular"}[distance]


class TripletTerm:
    """TLA's term for a network and a `config.TripletConfig`.

    Args:
      network: Keras model returning {'logits', 'embedding'}.
      config: the TripletConfig.
      bank: a memory_bank.EmbeddingBank for negative_pool 'bank', else None.
    """

    def __init__(self, network, config, bank=None):
        self.network, self.config, self.bank = network, config, bank

    @property
    def margin_other(self):
        """Margin of the 'other image' positive term (default: the own term's margin)."""
        cfg = self.config
        return cfg.margin if cfg.margin_other is None else cfg.margin_other

    def negative_index(self, anchor_embedding, labels, pool):
        """The one negative search: for each anchor, the index of the most similar entry of
        another class in `pool` (train_update_fast_triplet.py:623-626) -> (index [N], found [N])."""
        return losses.hardest_negative_index(
            anchor_embedding,
            labels,
            pool.embedding,
            pool.labels,
            distance=self.config.distance,
            pool_valid=pool.valid,
        )

    def __call__(
        self,
        images,
        adversarial,
        labels,
        *,
        training,
        seed,
        pool_images=None,
        pool_labels=None,
        other_images=None,
        need_clean=False,
    ):
        """TripletOutputs of one batch.

        Passes: adversarial anchors; clean images (the own positive, with the authors' noise
        when training, and the negative pool of 'batch'/'bank'); the chosen negatives ('extra');
        the other positives when the input carries them. `seed`: seeds.py root name -> int [2]
        stateless key of this step and replica. `need_clean`: run the clean pass even where the
        term does not need it (the TRADES base).
        """
        cfg = self.config
        if training and cfg.positive_noise > 0:
            images = noisy_positive(images, cfg.positive_noise, seed("training.positive_noise"))
        if cfg.mining == "semihard":
            return self._semihard(images, adversarial, labels, training)
        extra = cfg.negative_pool == "extra" and pool_images is not None
        own = cfg.positive in ("own", "both")
        other = cfg.positive in ("other", "both")
        other_from_data = other and other_images is not None
        # The clean pass feeds the own positive, the 'batch'/'bank' pool or the in-batch partner;
        # the authors' MNIST step (other positive, extra pool) has none.
        clean = need_clean or own or not extra or (other and not other_from_data)
        batches = [adversarial] + [images] * clean
        if extra:
            negative_images, found = self._extra_negatives(
                adversarial, labels, pool_images, pool_labels
            )
            batches.append(negative_images)
        if other_from_data:
            batches.append(other_images)
        outputs = forward_passes(self.network, batches, training, cfg.separate_passes)
        adversarial_out = outputs[0]
        clean_out = outputs[1] if clean else None
        if extra:
            negative_embedding = outputs[1 + clean]["embedding"]
        else:
            negative_embedding, found = self._pool_negatives(
                adversarial_out["embedding"], clean_out["embedding"], labels, training
            )
        positive_terms = []
        if own:
            positive_terms.append((clean_out["embedding"], cfg.margin))
        if other_from_data:
            positive_terms.append((outputs[-1]["embedding"], self.margin_other))
        elif other:
            partner = losses.same_class_partner_index(labels, seed("training.partner"))
            positive_terms.append((tf.gather(clean_out["embedding"], partner), self.margin_other))
        terms, positive_distances = [], []
        for positive_embedding, margin in positive_terms:
            term, stats = losses.tla_triplet_loss(
                adversarial_out["embedding"],
                positive_embedding,
                negative_embedding,
                margin=margin,
                distance=cfg.distance,
                lambda_norm=cfg.lambda_norm,
                valid=found,
            )
            terms.append(term)
            positive_distances.append(stats["positive_distance"])
        return TripletOutputs(
            adversarial_logits=adversarial_out["logits"],
            clean_logits=clean_out["logits"] if clean else None,
            triplet=tf.add_n(terms),
            positive_distance=tf.add_n(positive_distances) / float(len(positive_distances)),
            negative_distance=stats["negative_distance"],
            positive_embedding=positive_terms[0][0],
        )

    def _extra_negatives(self, adversarial, labels, pool_images, pool_labels):
        """The authors' retrieval: embed the extra clean pool and the anchors in inference mode
        (train_update_fast_triplet.py:592-595, pgd_attack_GPU.py:42-46) and pick each anchor's
        negative image. Returns (images, found)."""
        pool_embedding = tf.stop_gradient(self.network(pool_images, training=False)["embedding"])
        anchor_embedding = tf.stop_gradient(self.network(adversarial, training=False)["embedding"])
        index, found = self.negative_index(
            anchor_embedding, labels, NegativePool(pool_embedding, pool_labels)
        )
        return tf.gather(pool_images, index), found

    def _pool_negatives(self, anchor_embedding, clean_embedding, labels, training):
        """Negatives among the clean batch ('batch') and the memory bank ('bank'), whose queue
        then takes this batch. Returns (negative embeddings, found)."""
        pool = NegativePool(clean_embedding, labels)
        if self.bank is not None:
            bank_embedding, bank_labels, bank_valid = self.bank.read()
            pool = NegativePool(
                tf.concat([clean_embedding, tf.cast(bank_embedding, clean_embedding.dtype)], 0),
                tf.concat([labels, tf.cast(bank_labels, labels.dtype)], 0),
                tf.concat([tf.ones(tf.shape(labels), tf.bool), bank_valid], 0),
            )
        index, found = self.negative_index(anchor_embedding, labels, pool)
        if self.bank is not None and training:
            self.bank.enqueue(clean_embedding, labels)
        return tf.gather(pool.embedding, index), found

    def _semihard(self, images, adversarial, labels, training):
        """TFA's triplet_semihard_loss over the joint adversarial + clean batch."""
        cfg = self.config
        adversarial_out, clean_out = forward_passes(
            self.network, [adversarial, images], training, cfg.separate_passes
        )
        embeddings = tf.concat([adversarial_out["embedding"], clean_out["embedding"]], 0)
        batch_loss = losses.triplet_semihard_loss(
            tf.concat([labels, labels], 0),
            embeddings,
            margin=cfg.margin,
            distance_metric=tfa_metric(cfg.distance),
        )
        # One scalar per replica batch: spread it so compute_average_loss scales it once.
        # The norm part sits inside the term, as in the authors' triplet_loss (utils.py:155).
        norm = losses.embedding_norm_loss(adversarial_out["embedding"], clean_out["embedding"])
        triplet = tf.fill(tf.shape(labels), batch_loss) + cfg.lambda_norm * norm
        zeros = tf.zeros(tf.shape(labels))
        return TripletOutputs(
            adversarial_out["logits"],
            clean_out["logits"],
            triplet,
            zeros,
            zeros,
            clean_out["embedding"],
        )
