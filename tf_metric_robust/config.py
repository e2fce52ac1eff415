"""Frozen run settings passed from the flag layer (cli.py) down to training and evaluation.

Library modules take these small dataclasses (or plain arguments), never absl flags, so every piece
can be built and tested without parsing a command line.
"""

import dataclasses
from typing import Optional, Tuple

MODES = ("natural", "pgd", "tla")
MININGS = ("paper", "semihard")
NEGATIVE_POOLS = ("batch", "bank", "extra")
POSITIVES = ("own", "other", "both")
OTHER_POSITIVES = ("batch", "data")
DISTANCES = ("abs_cosine", "cosine", "l2", "squared_l2")


class UserError(ValueError):
    """A mistake in what the user asked for: the CLIs print it as one line, no traceback."""


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
        if not 0.0 <= self.eps <= 1.0:
            raise UserError(f"eps must be in [0, 1] (images are on [0,1]), got {self.eps}")
        if self.step_size <= 0:
            raise UserError(f"step_size must be > 0, got {self.step_size}")
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
        if self.margin < 0 or (self.margin_other is not None and self.margin_other < 0):
            raise UserError("triplet margins must be >= 0")
        if self.bank_size < 1 or self.pool_multiplier < 1:
            raise UserError("bank_size and pool_multiplier must be >= 1")
        if self.other_positive not in OTHER_POSITIVES:
            raise UserError(f"other_positive must be one of {', '.join(OTHER_POSITIVES)}; "
                            f"got {self.other_positive!r}")
        if not 0.0 <= self.positive_noise <= 1.0:
            raise UserError(f"positive_noise must be in [0, 1], got {self.positive_noise}")

    @property
    def other_margin(self):
        return self.margin if self.margin_other is None else self.margin_other


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
        if self.lr_values and len(self.lr_values) != len(self.lr_boundaries) + 1:
            raise UserError("lr_values needs exactly one more entry than lr_boundaries "
                             f"({len(self.lr_values)} values, {len(self.lr_boundaries)} boundaries)")
        if list(self.lr_boundaries) != sorted(self.lr_boundaries):
            raise UserError("lr_boundaries must be increasing")
