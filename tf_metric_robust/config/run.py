"""The whole training run's settings (TrainConfig) and what of them recipe.json records.

Built by cli.train_config() or directly from Python; validates itself, no TensorFlow here.
"""

import dataclasses
from typing import Optional

from tf_metric_robust.config.common import NON_NEGATIVE, UNIT_OPEN, UserError
from tf_metric_robust.config.training import (
    RECIPE_KEYS,
    AttackConfig,
    OptimizerConfig,
    OverfitConfig,
    TripletConfig,
    check_mode,
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; built from flags by cli.train_config()."""

    model_dir: str
    dataset: str = "mnist5k"
    data_dir: Optional[str] = None
    download: bool = False
    model: str = "small_cnn"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    mode: str = "tla"
    batch_size: int = 50
    train_steps: int = 1000
    optimizer: OptimizerConfig = OptimizerConfig()
    label_smoothing: float = 0.0
    augment: Optional[bool] = None
    attack: AttackConfig = AttackConfig(eps=0.3, step_size=0.01, steps=40)
    eps_warmup_steps: int = 0
    eval_attack: AttackConfig = AttackConfig(eps=0.3, step_size=0.01, steps=100)
    triplet: TripletConfig = TripletConfig()
    eval_every: int = 500
    eval_examples: int = 1000
    final_eval_examples: Optional[int] = None
    eval_batch_size: int = 200
    strategy: str = "auto"
    tpu: Optional[str] = None
    mixed_precision: str = "none"
    jit_compile: bool = False
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    init_checkpoint: Optional[str] = None
    export: bool = True
    attack_bn_mode: str = "inference"  # BN mode of the training attack (training.ATTACK_BN_MODES)
    validation_examples: int = 0  # first N training examples held out (data.validation_split)
    select_best: str = "none"  # 'pgd': keep and export the best validation-PGD checkpoint
    eval_round_to_grid: bool = False  # evaluation adversarial images rounded to the 1/255 grid
    beta: float = 6.0  # weight of the KL term of modes trades and mart (config.check_mode)
    overfit: OverfitConfig = OverfitConfig()  # fast AT's overfitting guard (overfit_guard.py)
    base: str = "pgd"  # mode tla: what the triplet term is added to (BASES; check_mode)
    awp_gamma: float = 0.0  # AWP's relative weight perturbation (awp.py); 0: off
    awp_warmup_steps: int = 0  # training steps before AWP starts
    ema_decay: float = 0.0  # EMA of the weights, evaluated and exported (weight_averaging.py)
    # Every result-changing flag by name (cli.recipe_settings()); None (Python API): derived from
    # this config's own fields. Part of recipe.json: a resume must match it.
    settings: Optional[dict] = None
    allow_changes: tuple = ()  # settings a resume may change (recorded in history.jsonl)

    def __post_init__(self):
        for name in (
            "batch_size",
            "train_steps",
            "eval_every",
            "checkpoint_every",
            "eval_examples",
            "eval_batch_size",
            "keep_checkpoints",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_mode(
            self.mode,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            attack=self.attack,
            base=self.base,
            positive_noise=self.triplet.positive_noise,
        )
        NON_NEGATIVE.check("awp_gamma", self.awp_gamma)
        if self.awp_warmup_steps < 0:
            raise UserError(f"awp_warmup_steps must be >= 0, got {self.awp_warmup_steps}")
        UNIT_OPEN.check("ema_decay", self.ema_decay)

    def recipe(self):
        """What recipe.json records: the network-defining keys and every result setting."""
        settings = self.settings
        if settings is None:
            fields = {
                k: v for k, v in dataclasses.asdict(self).items() if k not in OPERATIONAL_FIELDS
            }
            settings = dict(_flatten(fields))
        return {**{key: getattr(self, key) for key in RECIPE_KEYS}, "settings": settings}


# TrainConfig fields that do not change results (where a run reads and writes, how often it
# checkpoints or evaluates on the side, which hardware runs it): never part of the recipe.
# cli.record.NOT_IN_RECIPE, bin/train's flags outside recipe.json, are these but `settings`.
OPERATIONAL_FIELDS = (
    "model_dir",
    "data_dir",
    "download",
    "eval_every",
    "eval_examples",
    "eval_batch_size",
    "strategy",
    "tpu",
    "jit_compile",
    "deterministic",
    "checkpoint_every",
    "keep_checkpoints",
    "init_checkpoint",
    "export",
    "settings",
    "allow_changes",
)


def _flatten(values, prefix=""):
    """{'optimizer': {'name': 'sgd'}} -> ('optimizer.name', 'sgd'), ..."""
    for key, value in values.items():
        if isinstance(value, dict) and key != "model_kwargs":
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
