"""One Keras model whose train_step does natural training, PGD-AT (Madry et al. 2018), TLA,
TRADES (Zhang et al. 2019) or MART (Wang et al. 2020).

TLA (Mao et al., NeurIPS 2019, arXiv 1909.00900): CE on PGD examples plus, for each positive term
t, lambda_triplet * ([D(h(x'_a), h(x_p,t)) - D(h(x'_a), h(x_n)) + margin]_+ + lambda_norm * L_norm),
with h the penultimate embedding, as the authors' train_update_fast_triplet.py:366-376 adds
utils.triplet_loss terms. TRADES and MART: losses.trades_loss / mart_loss on a clean and an
adversarial pass, the attack run in inference mode from x + 0.001 N(0, 1) (trades.py:28-31,
mart.py:17-20). The modes share one step; only the attack objective and the loss differ.
"""

import keras
import tensorflow as tf

from tf_metric_robust import attacks, losses, positives
from tf_metric_robust.attacks import objectives
from tf_metric_robust.config import TripletConfig
from tf_metric_robust.memory_bank import EmbeddingBank


ATTACK_BN_MODES = ("inference", "train")  # BN statistics the training attack runs with
MODES = ("natural", "pgd", "tla", "trades", "mart")
KL_MODES = ("trades", "mart")  # CE plus beta x a KL(clean || adversarial) term


class AdversarialTrainer(keras.Model):
    """Wraps a network returning {'logits', 'embedding'} with a natural / pgd / tla / trades /
    mart train_step.

    Use `fit()` as usual: callbacks, distribution and progress bars come from Keras. Losses are
    reduced per example with `tf.nn.compute_average_loss` because Keras 3 *sums* gradients over
    replicas (DESIGN.md); the regulariser goes through `tf.nn.scale_regularization_loss`.
    `attack_bn_mode` ('inference' or 'train') is the BN mode of the training attack;
    `eval_round_to_grid` rounds evaluation adversarial images to the 1/255 pixel grid.
    `beta` weighs the KL term of trades and mart (both references: 6 on CIFAR-10).
    """

    def __init__(self, network, *, mode, attack=None, eval_attack=None, triplet=None,
                 label_smoothing=0.0, seed=0, eps_warmup_steps=0, attack_bn_mode="inference",
                 eval_round_to_grid=False, beta=6.0, **kwargs):
        super().__init__(**kwargs)
        if attack_bn_mode not in ATTACK_BN_MODES:
            raise ValueError(f"attack_bn_mode must be one of {ATTACK_BN_MODES}, got "
                             f"{attack_bn_mode!r}")
        self.attack_bn_mode = attack_bn_mode
        self.eval_round_to_grid = bool(eval_round_to_grid)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if mode != "natural" and attack is None:
            raise ValueError(f"mode {mode!r} needs an attack configuration")
        if mode in KL_MODES and label_smoothing:
            raise ValueError(f"mode {mode!r} uses plain cross-entropy (as its reference): "
                             f"label_smoothing must be 0, got {label_smoothing}")
        self.beta = float(beta)
        self.network = network
        self.mode = mode
        self.attack = attack
        self.eval_attack = eval_attack or attack
        self.triplet = triplet or TripletConfig()
        self.label_smoothing = float(label_smoothing)
        self.seed = int(seed)
        self.eps_warmup_steps = int(eps_warmup_steps)
        self.num_classes = int(network.output["logits"].shape[-1])
        self.bank = None
        if mode == "tla" and self.triplet.mining == "paper" and self.triplet.negative_pool == "bank":
            dim = int(network.output["embedding"].shape[-1])
            self.bank = EmbeddingBank(self.triplet.bank_size, dim, name="negative_bank")
        names = ["loss", "ce_loss", "clean_accuracy", "pgd_accuracy"]
        if mode == "tla":
            names += ["triplet_loss", "positive_distance", "negative_distance", "embedding_norm"]
        if mode in KL_MODES:
            names += ["robust_loss"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, images, training=False):
        return self.network(images, training=training)

    def logits_fn(self, images):
        """Inference-mode logits (BN moving statistics): what evaluation attacks differentiate, and
        the TLA training attack, as the authors' TLA code attacks with is_training False
        (train_update_fast_triplet.py:546, 611)."""
        return self.network(images, training=False)["logits"]

    def training_logits_fn(self, images):
        """Training-mode logits (BN batch statistics, moving averages updated at every call): the
        PGD-AT training attack of Madry's cifar10_challenge (train.py:41, 57: the attack is built
        on Model(mode='train'), model.py:110) and of the TLA authors' train_at_madry.py:364."""
        return self.network(images, training=True)["logits"]

    # ----------------------------------------------------------------------------- losses
    def _cross_entropy(self, labels, logits):
        one_hot = tf.one_hot(labels, self.num_classes)
        return keras.losses.categorical_crossentropy(
            one_hot, tf.cast(logits, tf.float32), from_logits=True,
            label_smoothing=self.label_smoothing)

    def _attack_seed(self, offset):
        """Stateless seed from the step, so a resumed run draws the same random starts."""
        replica = tf.distribute.get_replica_context()
        replica_id = tf.cast(replica.replica_id_in_sync_group if replica else 0, tf.int64)
        step = tf.cast(self.optimizer.iterations, tf.int64) if self.optimizer else tf.constant(0, tf.int64)
        return tf.stack([tf.constant(self.seed, tf.int64) * 1000 + replica_id + offset, step])

    def _forward(self, batches, training):
        """Network outputs for each image batch: one forward pass per batch, each with its own BN
        batch statistics, as the authors call model._encoder once per input
        (train_update_fast_triplet.py:252-273), or, with separate_passes=False, one joint pass."""
        if self.triplet.separate_passes or len(batches) == 1:
            return [self.network(images, training=training) for images in batches]
        sizes = tf.stack([tf.shape(images)[0] for images in batches])
        outputs = self.network(tf.concat(batches, 0), training=training)
        parts = {key: tf.split(outputs[key], sizes) for key in ("logits", "embedding")}
        return [{key: parts[key][i] for key in parts} for i in range(len(batches))]

    def _triplet_terms(self, labels, adversarial_embedding, positives, negative_embedding,
                       negative_found):
        """Sum over the positive terms [(embedding, margin)] of the authors' triplet term, norm
        part inside each (train_update_fast_triplet.py:370-376), and statistics."""
        cfg = self.triplet
        terms, positive_distances = [], []
        for positive_embedding, margin in positives:
            term, stats = losses.tla_triplet_loss(
                adversarial_embedding, positive_embedding, negative_embedding, margin=margin,
                distance=cfg.distance, lambda_norm=cfg.lambda_norm, valid=negative_found)
            terms.append(term)
            positive_distances.append(stats["positive_distance"])
        return (tf.add_n(terms), tf.add_n(positive_distances) / float(len(positives)),
                stats["negative_distance"])

    def _hardest_extra_negatives(self, adversarial, labels, pool_images, pool_labels):
        """The authors' retrieval: embed the extra clean pool and the anchors in inference mode
        (train_update_fast_triplet.py:592-595, pgd_attack_GPU.py:42-46), take for each anchor the
        most similar image of another class (lines 623-626). Returns (images, found)."""
        cfg = self.triplet
        pool_embedding = tf.stop_gradient(self.network(pool_images, training=False)["embedding"])
        anchor_embedding = tf.stop_gradient(self.network(adversarial, training=False)["embedding"])
        index, found = losses.hardest_negative_index(
            anchor_embedding, labels, pool_embedding, pool_labels, distance=cfg.distance)
        return tf.gather(pool_images, index), found

    def _tla_losses(self, images, adversarial, labels, pool_images, pool_labels, other_images,
                    training):
        """TLA forward passes -> (adversarial logits, clean logits or None, triplet [N], logs).

        Passes: adversarial anchors; clean images (the own positive, with the authors' noise when
        training, and the negative pool of 'batch'/'bank'); the chosen negatives ('extra'); the
        other positives when the input carries them (data.train_dataset(other_positives=True)).
        """
        cfg = self.triplet
        batch = tf.shape(images)[0]
        if training and cfg.positive_noise > 0:
            images = positives.noisy_positive(images, cfg.positive_noise,
                                              self._attack_seed(offset=700))
        if cfg.mining == "semihard":
            adversarial_out, clean_out = self._forward([adversarial, images], training)
            embeddings = tf.concat([adversarial_out["embedding"], clean_out["embedding"]], 0)
            batch_loss = losses.triplet_semihard_loss(tf.concat([labels, labels], 0), embeddings,
                                                      margin=cfg.margin,
                                                      distance_metric=_tfa_metric(cfg.distance))
            # One scalar per replica batch: spread it so compute_average_loss scales it once.
            # The norm part sits inside the term, as in the authors' triplet_loss (utils.py:155).
            norm = losses.embedding_norm_loss(adversarial_out["embedding"], clean_out["embedding"])
            triplet = tf.fill([batch], batch_loss) + cfg.lambda_norm * norm
            zeros = tf.zeros([batch])
            return (adversarial_out["logits"], clean_out["logits"], triplet,
                    dict(positive_distance=zeros, negative_distance=zeros,
                         positive_embedding=clean_out["embedding"]))

        extra = cfg.negative_pool == "extra" and pool_images is not None
        own = cfg.positive in ("own", "both")
        other = cfg.positive in ("other", "both")
        other_from_data = other and other_images is not None
        # The clean pass feeds the own positive, the 'batch'/'bank' pool or the in-batch partner;
        # the authors' MNIST step (other positive, extra pool) has none.
        clean = own or not extra or (other and not other_from_data)
        batches = [adversarial] + [images] * clean
        if extra:
            negative_images, found = self._hardest_extra_negatives(adversarial, labels,
                                                                   pool_images, pool_labels)
            batches.append(negative_images)
        if other_from_data:
            batches.append(other_images)
        outputs = self._forward(batches, training)
        adversarial_out = outputs[0]
        clean_out = outputs[1] if clean else None
        if extra:
            negative_embedding = outputs[1 + clean]["embedding"]
        else:
            clean_embedding = clean_out["embedding"]
            pool_embedding, pool_labels_all, pool_valid = clean_embedding, labels, None
            if self.bank is not None:
                bank_embedding, bank_labels, bank_valid = self.bank.read()
                pool_embedding = tf.concat(
                    [clean_embedding, tf.cast(bank_embedding, clean_embedding.dtype)], 0)
                pool_labels_all = tf.concat([labels, tf.cast(bank_labels, labels.dtype)], 0)
                pool_valid = tf.concat([tf.ones([batch], tf.bool), bank_valid], 0)
            index, found = losses.hardest_negative_index(
                adversarial_out["embedding"], labels, pool_embedding, pool_labels_all,
                distance=cfg.distance, pool_valid=pool_valid)
            negative_embedding = tf.gather(pool_embedding, index)
            if self.bank is not None and training:
                self.bank.enqueue(clean_embedding, labels)
        positive_terms = []
        if own:
            positive_terms.append((clean_out["embedding"], cfg.margin))
        if other_from_data:
            positive_terms.append((outputs[-1]["embedding"], cfg.other_margin))
        elif other:
            partner = losses.same_class_partner_index(labels, self._attack_seed(offset=500))
            positive_terms.append((tf.gather(clean_out["embedding"], partner), cfg.other_margin))
        triplet, positive_distance, negative_distance = self._triplet_terms(
            labels, adversarial_out["embedding"], positive_terms, negative_embedding, found)
        return (adversarial_out["logits"], clean_out["logits"] if clean else None, triplet,
                dict(positive_distance=positive_distance, negative_distance=negative_distance,
                     positive_embedding=positive_terms[0][0]))

    def compute_losses(self, images, labels, adversarial, training, pool_images=None,
                       pool_labels=None, other_images=None):
        """Per-example total loss and per-example logs, shared by train_step and test_step."""
        logs = {}
        if self.mode == "natural":
            clean_logits = self.network(images, training=training)["logits"]
            adversarial_logits = None
            ce = self._cross_entropy(labels, clean_logits)
            total = ce
        elif self.mode == "pgd":
            adversarial_logits = self.network(adversarial, training=training)["logits"]
            clean_logits = None
            ce = self._cross_entropy(labels, adversarial_logits)
            total = ce
        elif self.mode in KL_MODES:
            # Clean and adversarial passes, each with its own BN statistics, in training mode
            # (trades.py:73-82, mart.py:32-40).
            clean_out, adversarial_out = self._forward([images, adversarial], training)
            clean_logits, adversarial_logits = clean_out["logits"], adversarial_out["logits"]
            loss_fn = losses.trades_loss if self.mode == "trades" else losses.mart_loss
            total = loss_fn(labels, clean_logits, adversarial_logits, beta=self.beta)
            # TRADES' CE is on the clean images, MART's on the adversarial ones.
            ce = self._cross_entropy(labels, clean_logits if self.mode == "trades"
                                     else adversarial_logits)
            logs["robust_loss"] = total - ce  # what the mode adds to its CE
        else:
            adversarial_logits, clean_logits, triplet, parts = self._tla_losses(
                images, adversarial, labels, pool_images, pool_labels, other_images, training)
            # CE on the adversarial images only (config train_flag_adv_only, lines 382-389);
            # lambda_triplet weighs each whole term, norm part included (lines 372, 376).
            ce = self._cross_entropy(labels, adversarial_logits)
            total = ce + self.triplet.lambda_triplet * triplet
            logs.update(triplet_loss=triplet, positive_distance=parts["positive_distance"],
                        negative_distance=parts["negative_distance"],
                        embedding_norm=tf.norm(tf.cast(parts["positive_embedding"], tf.float32),
                                               axis=-1))
        logs["ce_loss"] = ce
        return total, logs, clean_logits, adversarial_logits

    # ------------------------------------------------------------------------------ steps
    def _unpack(self, data, training):
        """(images, labels, pool images, pool labels, other positives) of an input batch.

        Inputs are (images, labels), or ((images, other_images), labels) from
        data.train_dataset(other_positives=True).
        """
        images, labels = data[0], data[1]
        other_images = None
        if isinstance(images, (tuple, list)):
            images, other_images = images
        elif training and self._needs_other_images():
            raise ValueError("triplet other_positive='data' needs ((images, other_images), labels) "
                             "batches: data.train_dataset(..., other_positives=True)")
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
        pool_images = pool_labels = None
        if training and self.mode == "tla" and self.triplet.negative_pool == "extra":
            # The input pipeline delivers batch * (1 + pool_multiplier) images: batch, then pool.
            batch = tf.shape(images)[0] // (1 + self.triplet.pool_multiplier)
            images, pool_images = images[:batch], images[batch:]
            labels, pool_labels = labels[:batch], labels[batch:]
            if other_images is not None:
                other_images = other_images[:batch]
        return images, labels, pool_images, pool_labels, other_images

    def _needs_other_images(self):
        return (self.mode == "tla" and self.triplet.mining == "paper"
                and self.triplet.positive in ("other", "both")
                and self.triplet.other_positive == "data")

    def _update_metrics(self, loss, logs, labels, clean_logits, adversarial_logits):
        self.trackers["loss"].update_state(loss)
        for name, value in logs.items():
            self.trackers[name].update_state(value)
        for name, logits in (("clean_accuracy", clean_logits), ("pgd_accuracy", adversarial_logits)):
            if logits is not None:
                correct = tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32)
                self.trackers[name].update_state(correct)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def _training_attack_kwargs(self):
        """The training attack; with eps warm-up, eps and step_size grow linearly to full size.

        Starting PGD-AT at full eps (e.g. 0.3 on MNIST) leaves a long plateau near chance; a
        linear ramp (as in Gowal et al. 2018, IBP, and Wong et al. 2020) gets past it quickly.
        """
        kwargs = self.attack.kwargs()
        if self.eps_warmup_steps > 0:
            step = tf.cast(self.optimizer.iterations, tf.float32) + 1.0
            fraction = tf.minimum(1.0, step / float(self.eps_warmup_steps))
            kwargs["eps"] = fraction * self.attack.eps
            kwargs["step_size"] = fraction * self.attack.step_size
        return kwargs

    def _training_attack(self, images, labels):
        """The training attack's images. TRADES maximises KL(p(x) || p(x')) against the clean
        logits of the same BN mode (trades.py:36-37); TRADES and MART start from x + 0.001 N(0, 1)
        (trades.py:31, mart.py:20) where the others start uniformly in the ball."""
        model_fn = self.training_logits_fn if self.attack_bn_mode == "train" else self.logits_fn
        kwargs = self._training_attack_kwargs()
        targets = labels
        if self.mode in KL_MODES and kwargs["random_start"]:
            kwargs["random_start"] = objectives.TRADES_START_STD
        if self.mode == "trades":
            kwargs["loss"] = "kl"
            targets = tf.stop_gradient(model_fn(images))
        return tf.stop_gradient(attacks.pgd(model_fn, images, targets,
                                            seed=self._attack_seed(offset=0), **kwargs))

    def train_step(self, data):
        images, labels, pool_images, pool_labels, other_images = self._unpack(data, training=True)
        adversarial = images
        if self.mode != "natural":
            adversarial = self._training_attack(images, labels)
        with tf.GradientTape() as tape:
            per_example, logs, clean_logits, adversarial_logits = self.compute_losses(
                images, labels, adversarial, True, pool_images, pool_labels, other_images)
            loss = tf.nn.compute_average_loss(per_example)
            if self.network.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.network.losses))
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.network.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        # The tracker sees the global-mean loss of this replica's share (undo the replica split).
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return self._update_metrics(loss * replicas, logs, labels, clean_logits, adversarial_logits)

    def test_step(self, data):
        images, labels, _, _, _ = self._unpack(data, training=False)
        adversarial = attacks.pgd(self.logits_fn, images, labels, **self.eval_attack.kwargs())
        if self.eval_round_to_grid:
            # The authors' CIFAR evaluation rounds adversarial images to integer pixels
            # (pgd_attack.py:285-286); clean images on the grid keep them in the eps-ball.
            adversarial = tf.round(adversarial * positives.PIXEL_LEVELS) / positives.PIXEL_LEVELS
        per_example, logs, clean_logits, adversarial_logits = self.compute_losses(
            images, labels, adversarial, False)
        if clean_logits is None:
            clean_logits = self.logits_fn(images)
        if adversarial_logits is None:
            adversarial_logits = self.logits_fn(adversarial)
        return self._update_metrics(tf.reduce_mean(per_example), logs, labels, clean_logits,
                                    adversarial_logits)


def _tfa_metric(distance):
    """Our distance names -> TFA's distance_metric for triplet_semihard_loss (|cos|: a callable)."""
    if distance == "abs_cosine":
        return lambda embeddings: losses.pairwise_distance(embeddings, embeddings, "abs_cosine")
    return {"l2": "L2", "squared_l2": "squared-L2", "cosine": "angular"}[distance]


def make_optimizer(config):
    """SGD/Adam with the piecewise-constant schedule of the recipe (Madry / TLA authors)."""
    learning_rate = config.learning_rate
    if config.lr_boundaries:
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            list(config.lr_boundaries), list(config.lr_values))
    if config.name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=config.momentum)
    return keras.optimizers.Adam(learning_rate)
