"""Frozen run settings passed from the flag layer (cli.py) down to training and evaluation.

Library modules take these small dataclasses (or plain arguments), never absl flags, so every piece
can be built and tested without parsing a command line.
"""

import dataclasses
import math
from typing import Optional, Tuple

MODES = ("natural", "pgd", "tla", "trades", "mart")
KL_MODES = ("trades", "mart")  # TRADES (Zhang et al. 2019), MART (Wang et al. 2020): beta x KL
MININGS = ("paper", "semihard")
NEGATIVE_POOLS = ("batch", "bank", "extra")
POSITIVES = ("own", "other", "both")
OTHER_POSITIVES = ("batch", "data")
DISTANCES = ("abs_cosine", "cosine", "l2", "squared_l2")


class UserError(ValueError):
    """A mistake in what the user asked for: the CLIs print it as one line, no traceback."""


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed or open interval of allowed values; cli.py shows it in --help and checks flags."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value):
        if not math.isfinite(value):  # NaN and inf are never a setting
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self):
        low, high = (f"{v:g}" for v in (self.low, self.high))
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def check(self, name, value):
        """Raises UserError('<name> must be in <range>, got <value>') unless value is inside."""
        if value not in self:
            raise UserError(f"{name} must be in {self}, got {value}")


POSITIVE = Range(0.0, math.inf, low_open=True, high_open=True)
NON_NEGATIVE = Range(0.0, math.inf, high_open=True)
UNIT = Range(0.0, 1.0)  # eps on the [0,1] pixel scale
UNIT_OPEN = Range(0.0, 1.0, high_open=True)  # momentum, label smoothing


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

    def __post_init__(self):
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
        """Keyword arguments of `attacks.pgd`."""
        return dict(eps=self.eps, step_size=self.step_size, steps=self.steps, norm=self.norm,
                    loss=self.loss, random_start=self.random_start, restarts=self.restarts)


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
    margin_other: Optional[float] = None
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
        for name, value, allowed in (("triplet_mining", self.mining, MININGS),
                                     ("negative_pool", self.negative_pool, NEGATIVE_POOLS),
                                     ("triplet_positive", self.positive, POSITIVES),
                                     ("triplet_distance", self.distance, DISTANCES)):
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
            raise UserError(f"other_positive must be one of {', '.join(OTHER_POSITIVES)}; "
                            f"got {self.other_positive!r}")
        if not 0.0 <= self.positive_noise <= 1.0:
            raise UserError(f"positive_noise must be in [0, 1], got {self.positive_noise}")

    @property
    def other_margin(self):
        return self.margin if self.margin_other is None else self.margin_other


def check_mode(mode, *, beta, label_smoothing, attack):
    """Raises UserError unless `mode` can run with these settings (the flag names are the fields).

    trades/mart: beta >= 0, plain cross-entropy as their references (label_smoothing 0); trades'
    attack maximises its KL term, so the attack loss must stay 'ce' and restarts 1.
    """
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    NON_NEGATIVE.check("beta", beta)
    if mode not in KL_MODES:
        return
    if label_smoothing:
        raise UserError(f"mode {mode} trains with plain cross-entropy as its reference: pass "
                        f"--label_smoothing=0 (got {label_smoothing})")
    if mode == "trades" and (attack.loss != "ce" or attack.restarts != 1):
        raise UserError("mode trades attacks its own KL term: --attack_loss must be ce (the "
                        f"default) and restarts 1, got {attack.loss!r} and {attack.restarts}")


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
            raise UserError("lr_values needs exactly one more entry than lr_boundaries "
                            f"({len(self.lr_values)} values, {len(self.lr_boundaries)} boundaries)")
