"""One Keras model whose train_step does natural training, PGD-AT (Madry et al. 2018), TLA,
TRADES (Zhang et al. 2019) or MART (Wang et al. 2020), optionally with AWP and a weight EMA.

The modes share one step: the training attack (TRADES and MART start it from x + 0.001 N(0, 1),
trades.py:28-31, mart.py:17-20), the mode's loss (mode_losses.py; TLA's triplet term, Mao et al.,
NeurIPS 2019, in triplet.py), the descent step, whose gradient AWP (Wu et al. 2020, awp.py) takes
at perturbed weights, and the weight EMA (ema.py) that follows it.
"""

import keras
import tensorflow as tf

from tf_metric_robust import attacks, distribute, seeds
from tf_metric_robust.attacks import objectives
from tf_metric_robust.config import TripletConfig, check_mode
from tf_metric_robust.config.run import ATTACK_BN_MODES
from tf_metric_robust.config.training import KL_MODES
from tf_metric_robust.training import awp, ema, mode_losses
from tf_metric_robust.training.memory_bank import EmbeddingBank
from tf_metric_robust.training.triplet import PIXEL_LEVELS, TripletTerm


class AdversarialTrainer(keras.Model):
    """Wraps a network returning {'logits', 'embedding'} with a natural / pgd / tla / trades /
    mart train_step.

    Use `fit()` as usual: callbacks, distribution and progress bars come from Keras. Losses are
    reduced per example with `tf.nn.compute_average_loss` because Keras 3 *sums* gradients over
    replicas; the regulariser goes through `tf.nn.scale_regularization_loss`.
    `attack_bn_mode` ('inference', 'train' or 'batch') is the BN mode of the training attack;
    `eval_round_to_grid` rounds evaluation adversarial images to the 1/255 pixel grid.
    `beta` weighs the KL term of trades, mart and tla with base 'trades' (references: 6 on
    CIFAR-10). `awp_gamma` > 0 turns AWP on after `awp_warmup_steps`; `ema_decay` > 0 keeps an
    EMA of the weights (`self.ema`, evaluated and exported instead of the raw weights; its
    warm-up and batch-norm statistics: `ema_warmup_steps`, `ema_batch_norm`, ema.py).
    """

    def __init__(
        self,
        network,
        *,
        mode,
        attack=None,
        eval_attack=None,
        triplet=None,
        label_smoothing=0.0,
        seed=0,
        eps_warmup_steps=0,
        attack_bn_mode="inference",
        eval_round_to_grid=False,
        beta=6.0,
        base="pgd",
        awp_gamma=0.0,
        awp_warmup_steps=0,
        ema_decay=0.0,
        ema_warmup_steps=0,
        ema_batch_norm="average",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode != "natural" and attack is None:
            raise ValueError(f"mode {mode!r} needs an attack configuration")
        if (eval_attack or attack) is None:
            raise ValueError(
                "evaluation reports PGD accuracy: pass eval_attack (an "
                "AttackConfig), or attack, which it defaults to"
            )
        self.triplet = triplet or TripletConfig()
        # What each mode needs of the other settings: the rule TrainConfig states too, for a
        # trainer built from Python without one (a TrainConfig has passed it already).
        check_mode(
            mode,
            base=base,
            label_smoothing=label_smoothing,
            attack=attack,
            positive_noise=self.triplet.positive_noise,
        )
        if attack_bn_mode not in ATTACK_BN_MODES:
            choices = ", ".join(ATTACK_BN_MODES)
            raise ValueError(f"attack_bn_mode must be one of {choices}; got {attack_bn_mode!r}")
        self.attack_bn_mode = attack_bn_mode
        self.eval_round_to_grid = bool(eval_round_to_grid)
        self.beta = float(beta)
        self.network = network
        self.mode, self.base = mode, base
        self.attack = attack
        self.eval_attack = eval_attack or attack
        self.label_smoothing = float(label_smoothing)
        self.seed = int(seed)
        self.eps_warmup_steps = int(eps_warmup_steps)
        self.num_classes = int(network.output["logits"].shape[-1])
        self.loss_settings = mode_losses.LossSettings(
            mode=mode,
            num_classes=self.num_classes,
            label_smoothing=self.label_smoothing,
            beta=self.beta,
            base=base,
            triplet=self.triplet,
        )
        self.bank = None
        cfg = self.triplet
        if mode == "tla" and cfg.mining == "paper" and cfg.negative_pool == "bank":
            dim = int(network.output["embedding"].shape[-1])
            self.bank = EmbeddingBank(self.triplet.bank_size, dim, name="negative_bank")
        self.triplet_term = TripletTerm(network, self.triplet, self.bank) if mode == "tla" else None
        self.awp = awp.WeightPerturbation(awp_gamma, awp_warmup_steps) if awp_gamma > 0 else None
        self.ema = None
        if ema_decay > 0:
            self.ema = ema.WeightAverage(network, ema_decay, ema_warmup_steps, ema_batch_norm)
        names = ["loss", "ce_loss", "clean_accuracy", "pgd_accuracy"]
        if mode == "tla":
            names += ["triplet_loss", "positive_distance", "negative_distance", "embedding_norm"]
        if mode in KL_MODES or self.loss_settings.trades_objective:
            names += ["robust_loss"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @classmethod
    def from_config(cls, network, config):
        """The trainer of a config.TrainConfig."""
        return cls(
            network,
            mode=config.mode,
            attack=config.attack,
            eval_attack=config.eval_attack,
            triplet=config.triplet,
            label_smoothing=config.label_smoothing,
            seed=config.seed,
            eps_warmup_steps=config.eps_warmup_steps,
            attack_bn_mode=config.attack_bn_mode,
            eval_round_to_grid=config.eval_round_to_grid,
            beta=config.beta,
            base=config.base,
            awp_gamma=config.awp_gamma,
            awp_warmup_steps=config.awp_warmup_steps,
            ema_decay=config.ema_decay,
            ema_warmup_steps=config.ema_warmup_steps,
            ema_batch_norm=config.ema_batch_norm,
        )

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, images, training=False):
        """The network's outputs. A training input with TLA's other positives from the data is
        (images, other images): under a tf.distribute strategy Keras' fit first calls the model
        on that structure to build it (keras/src/backend/tensorflow/trainer.py,
        _maybe_symbolic_build), so the images are taken from it."""
        if isinstance(images, (tuple, list)):
            images = images[0]
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

    # ------------------------------------------------------------------------------ steps
    def compute_losses(self, batch, adversarial, training):
        """The mode's Losses on a mode_losses.Batch, shared by train_step and test_step."""
        if self.triplet_term is not None:
            return mode_losses.tla_loss(
                batch,
                adversarial,
                training,
                self.loss_settings,
                term=self.triplet_term,
                seed=self._seed,
            )
        loss_fn = mode_losses.LOSSES[self.mode]
        return loss_fn(self.network, batch, adversarial, training, self.loss_settings)

    def _unpack(self, data, training):
        """The mode_losses.Batch of an input, split as this trainer's mode needs."""
        return mode_losses.split_batch(
            data, training=training, mode=self.mode, triplet=self.triplet
        )

    def _seed(self, root):
        """Stateless key of this step and replica under `root` (seeds.py): a resumed run draws
        the same random starts and positives."""
        replica = tf.distribute.get_replica_context()
        replica_id = replica.replica_id_in_sync_group if replica else 0
        step = self.optimizer.iterations if self.optimizer else 0
        return seeds.key(self.seed, root, step, replica_id)

    def _update_metrics(self, loss, result, labels):
        """The step's logs. An accuracy the step has no logits for is left out, not logged as 0
        (PGD-AT trains on adversarial logits only, natural training on clean ones)."""
        self.trackers["loss"].update_state(loss)
        for name, value in result.logs.items():
            self.trackers[name].update_state(value)
        absent = set()
        for name, logits in (
            ("clean_accuracy", result.clean_logits),
            ("pgd_accuracy", result.adversarial_logits),
        ):
            if logits is None:
                absent.add(name)
                continue
            correct = tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32)
            self.trackers[name].update_state(correct)
        return {
            name: tracker.result() for name, tracker in self.trackers.items() if name not in absent
        }

    def _training_attack(self, images, labels):
        """The training attack's images; with eps warm-up, eps and step_size grow linearly to
        full size (as in Gowal et al. 2018 and Wong et al. 2020: past the plateau near chance
        that full-size PGD-AT starts on). The TRADES objective maximises KL(p(x) || p(x'))
        against the clean logits of the same BN mode (trades.py:36-37); TRADES and MART start
        from x + 0.001 N(0, 1) (trades.py:31, mart.py:20) unless the attack's kl_start is
        'uniform' (DM-Improves-AT), the others uniformly in the ball; the
        fast attacks (FGSM-RS, N-FGSM) keep their own start in every mode."""
        batch_statistics = self.attack_bn_mode in ("train", "batch")
        model_fn = self.training_logits_fn if batch_statistics else self.logits_fn
        # 'batch': the attack's passes leave the BN moving statistics as they were, as
        # DM-Improves-AT's track_bn_stats(False) (gowal21uncovering/utils/trades.py:44-45).
        keep = self.network.non_trainable_variables if self.attack_bn_mode == "batch" else []
        kwargs = self.attack.kwargs()
        if self.eps_warmup_steps > 0:
            step = tf.cast(self.optimizer.iterations, tf.float32) + 1.0
            fraction = tf.minimum(1.0, step / float(self.eps_warmup_steps))
            kwargs["eps"] = fraction * self.attack.eps
            kwargs["step_size"] = fraction * self.attack.step_size
        targets = labels
        trades_objective = self.loss_settings.trades_objective
        kl_start = self.mode in KL_MODES or trades_objective
        gaussian_start = kl_start and self.attack.kl_start == "gaussian"
        if gaussian_start and self.attack.method == "pgd" and kwargs["random_start"]:
            kwargs["random_start"] = objectives.TRADES_START_STD
        with awp.state_kept(list(keep)):
            if trades_objective:
                kwargs["loss"] = "kl"
                targets = tf.stop_gradient(model_fn(images))
            adversarial = attacks.pgd(
                model_fn, images, targets, seed=self._seed("training.attack"), **kwargs
            )
        return tf.stop_gradient(adversarial)

    def _awp_perturbation(self, batch, adversarial, variables):
        """AWP's perturbation from the mode's own loss on this batch, BN statistics and bank
        kept (awp.py)."""
        keep = list(self.network.non_trainable_variables)
        if self.bank is not None:
            keep += list(self.bank.variables)
        return self.awp.compute(
            lambda: tf.nn.compute_average_loss(self.compute_losses(batch, adversarial, True).total),
            variables,
            self.optimizer.iterations,
            keep=keep,
        )

    def fit(self, x=None, *args, **kwargs):
        """Keras' fit, first refusing a dataset whose global batch the replicas cannot split
        evenly (distribute.check_batch_size: a one-line UserError). tf.distribute would give the
        replicas batches of different sizes, which fail deep in the step with an op's shape
        error. Batches of unknown size are left to that check at run time."""
        if isinstance(x, tf.data.Dataset):
            rows = tf.nest.flatten(x.element_spec)[0].shape
            if rows.rank and rows[0] is not None:
                distribute.check_batch_size(rows[0], self.distribute_strategy)
        return super().fit(x, *args, **kwargs)

    def train_step(self, data):
        batch = self._unpack(data, training=True)
        adversarial = batch.images
        if self.mode != "natural":
            adversarial = self._training_attack(batch.images, batch.labels)
        variables = self.network.trainable_variables
        perturbed = awp.perturbed_variables(self.network) if self.awp else []
        perturbation = self._awp_perturbation(batch, adversarial, perturbed) if self.awp else []
        # AWP: gradient at w + v, applied to w after an exact restore (awp.py).
        with awp.perturbed(perturbed, perturbation):
            with tf.GradientTape() as tape:
                result = self.compute_losses(batch, adversarial, True)
                loss = tf.nn.compute_average_loss(result.total)
                if self.network.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(self.network.losses))
                scaled_loss = self.optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        if self.ema is not None:
            self.ema.update(self.optimizer.iterations)
        # The tracker sees the global-mean loss of this replica's share (undo the replica split).
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return self._update_metrics(loss * replicas, result, batch.labels)

    def test_step(self, data):
        batch = self._unpack(data, training=False)
        images, labels = batch.images, batch.labels
        adversarial = attacks.pgd(self.logits_fn, images, labels, **self.eval_attack.kwargs())
        if self.eval_round_to_grid:
            # The authors' CIFAR evaluation rounds adversarial images to integer pixels
            # (pgd_attack.py:285-286); clean images on the grid keep them in the eps-ball.
            adversarial = tf.round(adversarial * PIXEL_LEVELS) / PIXEL_LEVELS
        result = self.compute_losses(mode_losses.Batch(images, labels), adversarial, False)
        if result.clean_logits is None:
            result = result._replace(clean_logits=self.logits_fn(images))
        if result.adversarial_logits is None:
            result = result._replace(adversarial_logits=self.logits_fn(adversarial))
        return self._update_metrics(tf.reduce_mean(result.total), result, labels)
