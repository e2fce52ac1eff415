"""Training settings: the attack, the overfitting guard, the TLA triplet term, the optimiser.

Frozen dataclasses built by cli.train_config() (or directly from Python); each setting is declared
once on its field (default, help, range or choices: common.setting), bin/train's flags are made
from those declarations, and each config validates itself, naming the flag. No TensorFlow here.
"""

import dataclasses
from typing import Optional, Tuple

from tf_metric_robust.config.common import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT, UNIT_OPEN
from tf_metric_robust.config.common import Range, UserError, check_settings, setting

MODES = ("natural", "pgd", "tla", "trades", "mart")
KL_MODES = ("trades", "mart")  # TRADES (Zhang et al. 2019), MART (Wang et al. 2020): beta x KL
BASES = ("pgd", "trades")  # --base of mode tla: CE on x' (the authors') or TRADES (ours)
# --train_attack: PGD, or fast AT's one step: FGSM-RS (Wong et al. 2020), N-FGSM (de Jorge 2022).
TRAIN_ATTACKS = ("pgd", "fgsm_rs", "n_fgsm")
N_FGSM_NOISE = 2.0  # N-FGSM start noise / eps (attacks.fast.N_FGSM_NOISE, train.py:51-56)
OVERFIT_ACTIONS = ("warn", "restore")
MININGS = ("paper", "semihard")
NEGATIVE_POOLS = ("batch", "bank", "extra")
POSITIVES = ("own", "other", "both")
OTHER_POSITIVES = ("batch", "data")
DISTANCES = ("abs_cosine", "cosine", "l2", "squared_l2")
# recipe.json keys that define the network (run_folder.load_network rebuilds it from them).
RECIPE_KEYS = ("dataset", "model", "model_kwargs", "mode")


NORMS = ("linf", "l2")
ATTACK_LOSSES = ("ce", "cw")
# Random start of the training attack of trades, mart and tla --base=trades.
KL_STARTS = ("gaussian", "uniform")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """An L-inf/L2 PGD attack (Madry et al. 2018): eps and step_size on the [0,1] pixel scale.

    Its flags: --eps, --step_size, ... for the training attack, --eval_eps, ... for the evaluation
    attack (TrainConfig.attack and eval_attack, whose defaults differ in steps)."""

    eps: float = setting(0.3, "L-inf/L2 radius on the [0,1] scale.", valid=UNIT)
    step_size: float = setting(0.01, "Step size of each PGD step.", valid=POSITIVE)
    steps: int = setting(40, "Number of PGD steps.", valid=AT_LEAST_ONE)
    norm: str = setting("linf", "Norm of the threat model.", choices=NORMS)
    loss: str = setting(
        "ce", "Loss: cross-entropy or CW margin.", choices=ATTACK_LOSSES, flag="attack_loss"
    )
    random_start: bool = setting(True, "Random start in the ball.")
    restarts: int = setting(1, "Random restarts (the strongest kept).", valid=AT_LEAST_ONE)
    method: str = setting(
        "pgd",
        "Training attack (pgd, trades, tla, mart): PGD; fgsm_rs: FGSM from a uniform start, step "
        "1.25 eps, projected (Wong et al. 2020); n_fgsm: noise U(-2 eps, 2 eps), step eps, no "
        "projection to the eps-ball (de Jorge et al. 2022). Fast ones need --steps=1.",
        choices=TRAIN_ATTACKS,
        flag="train_attack",
    )
    kl_start: str = setting(
        "gaussian",
        "Random start of the PGD training attack of --mode=trades, mart and tla --base=trades: "
        "gaussian = x + 0.001 N(0, 1) (TRADES trades.py:31, MART mart.py:20); uniform = "
        "uniform in the eps-ball (DM-Improves-AT gowal21uncovering/utils/trades.py:48-49).",
        choices=KL_STARTS,
        flag="kl_attack_start",
    )

    def __post_init__(self):
        check_settings(self)
        if self.method != "pgd" and (
            self.steps != 1 or self.restarts != 1 or not self.random_start
        ):
            raise UserError(
                f"train_attack {self.method} is one step from a random start: pass "
                f"--steps=1 and --random_start (got steps {self.steps}, random_start "
                f"{self.random_start}); step size: FGSM-RS 1.25 eps, N-FGSM eps"
            )

    def kwargs(self):
        """Keyword arguments of `attacks.pgd` (FGSM-RS is its one-step case; N-FGSM adds a 2 eps
        start and no projection to the eps-ball, attacks.fast.n_fgsm)."""
        kwargs = dataclasses.asdict(self)
        del kwargs["method"], kwargs["kl_start"]  # which attack and start, not its arguments
        if self.method == "n_fgsm":
            kwargs.update(start_scale=N_FGSM_NOISE, project_to_ball=False)
        return kwargs


@dataclasses.dataclass(frozen=True)
class OverfitConfig:
    """Catastrophic-overfitting guard of fast AT (Wong et al. 2020; training/overfit_guard.py)."""

    check_every: int = setting(
        0,
        "Catastrophic-overfitting guard: PGD-5 and FGSM probe on a fixed batch every this many "
        "steps (0: off).",
        valid=NON_NEGATIVE,
        flag="overfit_check_every",
    )
    action: str = setting(
        "warn",
        "When PGD probe accuracy collapses while FGSM accuracy climbs: warn, or restore the "
        "last good weights and continue with the training step size x 0.8.",
        choices=OVERFIT_ACTIONS,
        flag="on_overfit",
    )
    drop: float = setting(
        0.2,
        "PGD probe accuracy fall from its best that counts as a collapse (Wong et al. "
        "train_fgsm.py:137: 0.2).",
        valid=Range(0.0, 1.0, low_open=True),
        flag="overfit_drop",
    )

    def __post_init__(self):
        check_settings(self)


@dataclasses.dataclass(frozen=True)
class TripletConfig:
    """The TLA triplet term (Mao et al. 2019): how anchors, positives and negatives are chosen.

    mining 'paper': adversarial anchor, clean positive(s), most similar clean negative of another
    class from `negative_pool` ('batch' = the clean batch, 'bank' = a queue of recent clean
    embeddings, 'extra' = the authors' extra clean pool of `pool_multiplier` x batch).
    mining 'semihard': TFA's triplet_semihard_loss over the joint adversarial + clean batch.
    """

    mining: str = setting(
        "paper",
        "paper: adversarial anchor vs hardest clean negative; semihard: TFA loss.",
        choices=MININGS,
        flag="triplet_mining",
    )
    negative_pool: str = setting(
        "batch", "Where paper mining looks for negatives.", choices=NEGATIVE_POOLS
    )
    positive: str = setting(
        "own",
        "Positive: the anchor's clean source, another clean image of its class, or both terms.",
        choices=POSITIVES,
        flag="triplet_positive",
    )
    margin: float = setting(0.03, "Triplet margin alpha (own-source term).", valid=NON_NEGATIVE)
    margin_other: Optional[float] = setting(
        None, "Margin of the other-image term (default: margin).", valid=NON_NEGATIVE
    )
    distance: str = setting("abs_cosine", "Distance D.", choices=DISTANCES, flag="triplet_distance")
    lambda_triplet: float = setting(2.0, "Weight of the triplet term.", valid=NON_NEGATIVE)
    lambda_norm: float = setting(1e-3, "Weight of the embedding-norm term.", valid=NON_NEGATIVE)
    bank_size: int = setting(4096, "Memory bank size in embeddings ('bank').", valid=AT_LEAST_ONE)
    pool_multiplier: int = setting(
        10,
        "Extra clean pool size in batches ('extra'): a training step reads batch_size x (1 + "
        "pool_multiplier) examples.",
        valid=AT_LEAST_ONE,
    )
    # The authors' passes and positives (train_update_fast_triplet.py).
    separate_passes: bool = setting(
        True,
        "TLA: one forward pass per image batch (clean, adversarial, negatives, other "
        "positives), each with its own batch-norm statistics, as the authors "
        "(train_update_fast_triplet.py:252-273); --noseparate_bn_passes: one joint pass "
        "(faster; the same without BN).",
        flag="separate_bn_passes",
    )
    positive_noise: float = setting(
        0.0,
        "TLA own positive: add uniform noise in [-x, x], rounded to the 1/255 grid, clipped "
        "(authors' CIFAR nat_noise_level 8: 8/255).",
        valid=UNIT,
    )
    other_positive: str = setting(
        "batch",
        "TLA's 'other' positive: data = an independent training image of the class (the "
        "authors, train_update_fast_triplet.py:641-645); batch = another image of the class in "
        "the batch, or the image itself if there is none (cheaper).",
        choices=OTHER_POSITIVES,
    )

    def __post_init__(self):
        check_settings(self)


def check_mode(mode, *, base, label_smoothing, attack, positive_noise):
    """UserError unless `mode` (with `base`) can run with these settings: the one statement of
    what each mode needs of the others, for TrainConfig and for trainers built without one.

    mart trains with plain cross-entropy as its references (label_smoothing 0); trades smooths
    its natural CE term when asked, as DM-Improves-AT (gowal21uncovering/utils/trades.py:42, 110;
    losses.trades_loss), and its attack maximises its KL term, so the attack loss stays 'ce' with
    one restart. tla with base 'trades' (ours) follows trades, and takes TRADES' terms from an
    un-noised clean pass.
    """
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if base != "pgd" and mode != "tla":
        raise UserError(f"--base={base} needs --mode=tla (got --mode={mode})")
    if base == "trades" and positive_noise:
        raise UserError(
            "--base=trades takes TRADES' terms from the clean pass, which --positive_noise "
            f"would change: pass --positive_noise=0 (got {positive_noise})"
        )
    if mode not in KL_MODES and base == "pgd":
        return
    if mode == "mart" and label_smoothing:
        raise UserError(
            "mode mart trains with plain cross-entropy as its references (MART mart.py, "
            "DM-Improves-AT core/utils/mart.py:44): pass --label_smoothing=0 (got "
            f"{label_smoothing})"
        )
    if (mode == "trades" or base == "trades") and (attack.loss != "ce" or attack.restarts != 1):
        raise UserError(
            "mode trades attacks its own KL term: --attack_loss must be ce (the default) and "
            f"restarts 1, got {attack.loss!r} and {attack.restarts}"
        )


OPTIMIZERS = ("sgd", "adam")
# piecewise: --learning_rate, or --lr_values between --lr_boundaries (Madry, the TLA authors);
# one_cycle: PyTorch's OneCycleLR, DM-Improves-AT's 'cosinew' (training/optimizer.py).
LR_SCHEDULES = ("piecewise", "one_cycle")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """SGD with momentum and a piecewise-constant schedule, as Madry and the TLA authors train;
    or the one-cycle schedule, Nesterov and cycled momentum of the generated-data recipes
    (DM-Improves-AT). training/optimizer.py builds it."""

    name: str = setting("sgd", "Optimizer.", choices=OPTIMIZERS, flag="optimizer")
    learning_rate: float = setting(0.1, "Initial learning rate.", valid=POSITIVE)
    lr_boundaries: Tuple[int, ...] = setting(
        (),
        "Steps where the learning rate changes: strictly increasing whole numbers >= 1 (needs "
        "--lr_values).",
        valid=AT_LEAST_ONE,
    )
    lr_values: Tuple[float, ...] = setting(
        (),
        "Learning rates, one more than --lr_boundaries (fractions like 1/10 work).",
        valid=POSITIVE,
    )
    lr_schedule: str = setting(
        "piecewise",
        "piecewise: --learning_rate, or --lr_values between --lr_boundaries; one_cycle: PyTorch's "
        "OneCycleLR (DM-Improves-AT's cosinew): cosine from learning_rate/25 up to "
        "--learning_rate over --lr_warmup_fraction of --train_steps, then cosine down to "
        "learning_rate/25/1e4.",
        choices=LR_SCHEDULES,
    )
    lr_warmup_fraction: float = setting(
        0.025,
        "one_cycle: share of the schedule spent warming up (OneCycleLR's pct_start; "
        "DM-Improves-AT core/utils/train.py:93: 0.025).",
        valid=UNIT,
    )
    lr_update_every: int = setting(
        1,
        "one_cycle: steps between learning-rate (and cycled-momentum) updates: 1 per step; the "
        "steps of an epoch as DM-Improves-AT, which steps its schedule once per epoch.",
        valid=AT_LEAST_ONE,
    )
    momentum: float = setting(0.9, "SGD momentum.", valid=UNIT_OPEN)
    nesterov: bool = setting(
        False, "SGD with Nesterov momentum (DM-Improves-AT: on, core/utils/parser.py:42)."
    )
    cycle_momentum: bool = setting(
        False,
        "one_cycle with SGD: momentum cycled inversely to the learning rate, 0.95 -> 0.85 -> "
        "0.95, as OneCycleLR by default (so DM-Improves-AT trains; --momentum is then unused).",
    )
    weight_decay: float = setting(
        2e-4, "Coefficient of sum(l2_loss(kernel)) (Madry style).", valid=NON_NEGATIVE
    )

    def __post_init__(self):
        check_settings(self)
        if any(a >= b for a, b in zip(self.lr_boundaries, self.lr_boundaries[1:])):
            raise UserError(f"lr_boundaries must be strictly increasing, got {self.lr_boundaries}")
        if self.lr_boundaries and not self.lr_values:
            raise UserError("lr_boundaries needs lr_values (one learning rate per interval)")
        if self.lr_values and len(self.lr_values) != len(self.lr_boundaries) + 1:
            raise UserError(
                "lr_values needs exactly one more entry than lr_boundaries "
                f"({len(self.lr_values)} values, {len(self.lr_boundaries)} boundaries)"
            )
        if self.lr_schedule == "one_cycle" and self.lr_boundaries:
            raise UserError(
                "lr_schedule one_cycle computes its rates from --learning_rate: drop "
                f"--lr_boundaries/--lr_values (got {self.lr_boundaries})"
            )
        if self.lr_schedule != "one_cycle" and (self.lr_update_every != 1 or self.cycle_momentum):
            raise UserError(
                "lr_update_every and cycle_momentum set the one-cycle schedule: pass "
                "--lr_schedule=one_cycle"
            )
        if self.name != "sgd" and (self.nesterov or self.cycle_momentum):
            raise UserError(f"nesterov and cycle_momentum are SGD's (got --optimizer={self.name})")
