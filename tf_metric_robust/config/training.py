"""Training settings: the attack, the overfitting guard, the TLA triplet term, the optimiser.

Frozen dataclasses built by cli.train_config() (or directly from Python); each validates itself
and names the flag in its message. No TensorFlow here.
"""

import dataclasses
from typing import Optional, Tuple

from tf_metric_robust.config.common import NON_NEGATIVE, POSITIVE, UNIT, UNIT_OPEN, UserError

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
# recipe.json keys that define the network (run_files.load_network rebuilds it from them).
RECIPE_KEYS = ("dataset", "model", "model_kwargs", "mode")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """An L-inf/L2 PGD attack (Madry et al. 2018): eps and step_size on the [0,1] pixel scale."""

    eps: float
    step_size: float
    steps: int
    norm: str = "linf"
    loss: str = "ce"
    random_start: bool = True
    restarts: int = 1
    method: str = "pgd"  # TRAIN_ATTACKS; fgsm_rs / n_fgsm: one step from a random start

    def __post_init__(self):
        if self.method not in TRAIN_ATTACKS:
            raise UserError(
                f"train_attack must be one of {', '.join(TRAIN_ATTACKS)}; got {self.method!r}"
            )
        if self.method != "pgd" and (
            self.steps != 1 or self.restarts != 1 or not self.random_start
        ):
            raise UserError(
                f"train_attack {self.method} is one step from a random start: pass "
                f"--steps=1 and --random_start (got steps {self.steps}, random_start "
                f"{self.random_start}); step size: FGSM-RS 1.25 eps, N-FGSM eps"
            )
        UNIT.check("eps", self.eps)  # images are on [0,1]
        POSITIVE.check("step_size", self.step_size)
        if self.steps < 1:
            raise UserError(f"steps must be >= 1, got {self.steps}")
        if self.norm not in ("linf", "l2"):
            raise UserError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if self.loss not in ("ce", "cw"):
            raise UserError(f"attack loss must be 'ce' or 'cw', got {self.loss!r}")
        if self.restarts < 1:
            raise UserError(f"restarts must be >= 1, got {self.restarts}")

    def kwargs(self):
        """Keyword arguments of `attacks.pgd` (FGSM-RS is its one-step case; N-FGSM adds a 2 eps
        start and no projection to the eps-ball, attacks.fast.n_fgsm)."""
        kwargs = dataclasses.asdict(self)
        del kwargs["method"]  # which attack, not one of its arguments
        if self.method == "n_fgsm":
            kwargs.update(start_scale=N_FGSM_NOISE, project_to_ball=False)
        return kwargs


@dataclasses.dataclass(frozen=True)
class OverfitConfig:
    """The catastrophic-overfitting guard of fast AT (overfit_guard.py; Wong et al. 2020).

    check_every 0 turns it off; drop is the PGD-accuracy fall that counts as a collapse.
    """

    check_every: int = 0
    action: str = "warn"
    drop: float = 0.2  # train_fgsm.py:137

    def __post_init__(self):
        if self.check_every < 0:
            raise UserError(f"overfit_check_every must be >= 0, got {self.check_every}")
        if self.action not in OVERFIT_ACTIONS:
            raise UserError(
                f"on_overfit must be one of {', '.join(OVERFIT_ACTIONS)}; got {self.action!r}"
            )
        if not 0 < self.drop <= 1:
            raise UserError(f"overfit_drop must be in (0, 1], got {self.drop}")


@dataclasses.dataclass(frozen=True)
class TripletConfig:
    """The TLA triplet term (Mao et al. 2019): how anchors, positives and negatives are chosen.

    mining 'paper': adversarial anchor, clean positive(s), most similar clean negative of another
    class from `negative_pool` ('batch' = the clean batch, 'bank' = a queue of recent clean
    embeddings, 'extra' = the authors' extra clean pool of `pool_multiplier` x batch).
    mining 'semihard': TFA's triplet_semihard_loss over the joint adversarial + clean batch.
    """

    mining: str = "paper"
    negative_pool: str = "batch"
    positive: str = "own"
    margin: float = 0.03
    margin_other: Optional[float] = None  # the other-image positive term's margin (None: margin)
    distance: str = "abs_cosine"
    lambda_triplet: float = 2.0
    lambda_norm: float = 1e-3
    bank_size: int = 4096
    pool_multiplier: int = 10
    # Issue 14: the authors' passes and positives (train_update_fast_triplet.py).
    separate_passes: bool = True  # one forward pass (own BN statistics) per image batch
    positive_noise: float = 0.0  # own positive: +-noise uniform, on the 1/255 grid (CIFAR 8/255)
    other_positive: str = "batch"  # 'data': an independent image of the class; 'batch': a partner

    def __post_init__(self):
        for name, value, allowed in (
            ("triplet_mining", self.mining, MININGS),
            ("negative_pool", self.negative_pool, NEGATIVE_POOLS),
            ("triplet_positive", self.positive, POSITIVES),
            ("triplet_distance", self.distance, DISTANCES),
        ):
            if value not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        for name in ("margin", "lambda_triplet", "lambda_norm"):
            NON_NEGATIVE.check(name, getattr(self, name))
        if self.margin_other is not None:
            NON_NEGATIVE.check("margin_other", self.margin_other)
        for name in ("bank_size", "pool_multiplier"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.other_positive not in OTHER_POSITIVES:
            raise UserError(
                f"other_positive must be one of {', '.join(OTHER_POSITIVES)}; "
                f"got {self.other_positive!r}"
            )
        if not 0.0 <= self.positive_noise <= 1.0:
            raise UserError(f"positive_noise must be in [0, 1], got {self.positive_noise}")


def check_mode(mode, *, beta, label_smoothing, attack, base="pgd", positive_noise=0.0):
    """Raises UserError unless `mode` can run with these settings (the flag names are the fields).

    trades/mart: beta >= 0, plain cross-entropy as their references (label_smoothing 0); trades'
    attack maximises its KL term, so the attack loss must stay 'ce' and restarts 1. tla with
    base 'trades' (ours) follows trades, and takes TRADES' terms from an un-noised clean pass.
    """
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    NON_NEGATIVE.check("beta", beta)
    if base not in BASES or (base != "pgd" and mode != "tla"):
        raise UserError(
            f"base must be one of {', '.join(BASES)}, and other than pgd only with "
            f"--mode=tla; got --base={base} with --mode={mode}"
        )
    if base == "trades" and positive_noise:
        raise UserError(
            "--base=trades takes TRADES' terms from the clean pass, which "
            f"--positive_noise would change: pass --positive_noise=0 (got "
            f"{positive_noise})"
        )
    if mode not in KL_MODES and base == "pgd":
        return
    if label_smoothing:
        raise UserError(
            f"mode {mode} trains with plain cross-entropy as its reference: pass "
            f"--label_smoothing=0 (got {label_smoothing})"
        )
    if (mode == "trades" or base == "trades") and (attack.loss != "ce" or attack.restarts != 1):
        raise UserError(
            "mode trades attacks its own KL term: --attack_loss must be ce (the "
            f"default) and restarts 1, got {attack.loss!r} and {attack.restarts}"
        )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """SGD with momentum and a piecewise-constant schedule, as Madry and the TLA authors train."""

    name: str = "sgd"
    learning_rate: float = 0.1
    lr_boundaries: Tuple[int, ...] = ()
    lr_values: Tuple[float, ...] = ()
    momentum: float = 0.9
    weight_decay: float = 2e-4

    def __post_init__(self):
        if self.name not in ("sgd", "adam"):
            raise UserError(f"optimizer must be 'sgd' or 'adam', got {self.name!r}")
        POSITIVE.check("learning_rate", self.learning_rate)
        for value in self.lr_values:
            POSITIVE.check("lr_values", value)
        UNIT_OPEN.check("momentum", self.momentum)
        NON_NEGATIVE.check("weight_decay", self.weight_decay)
        if any(not float(b).is_integer() or b < 1 for b in self.lr_boundaries):
            raise UserError(f"lr_boundaries must be whole steps >= 1, got {self.lr_boundaries}")
        if any(a >= b for a, b in zip(self.lr_boundaries, self.lr_boundaries[1:])):
            raise UserError(f"lr_boundaries must be strictly increasing, got {self.lr_boundaries}")
        if self.lr_boundaries and not self.lr_values:
            raise UserError("lr_boundaries needs lr_values (one learning rate per interval)")
        if self.lr_values and len(self.lr_values) != len(self.lr_boundaries) + 1:
            raise UserError(
                "lr_values needs exactly one more entry than lr_boundaries "
                f"({len(self.lr_values)} values, {len(self.lr_boundaries)} boundaries)"
            )
