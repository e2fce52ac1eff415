"""The whole training run's settings (TrainConfig) and what of them recipe.json records.

Built by cli.train_config() or directly from Python; validates itself, no TensorFlow here.
"""

import dataclasses
from typing import Optional, Tuple

from tf_metric_robust.config.common import AT_LEAST_ONE, NON_NEGATIVE, UNIT, UNIT_OPEN, Range
from tf_metric_robust.config.common import UserError, check_settings, setting, sub_config
from tf_metric_robust.config.training import (
    BASES,
    MODES,
    RECIPE_KEYS,
    AttackConfig,
    OptimizerConfig,
    OverfitConfig,
    TripletConfig,
    check_mode,
)


# Names accepted by --dataset and --model (data.dataset_names() and models.MODELS, which need
# TensorFlow; a test keeps them equal), checked before TensorFlow is imported.
DATASETS = (
    "cifar10",
    "cifar100",
    "fashion_mnist",
    "mnist",
    "mnist5k",
    "svhn_cropped",
    "tiny_imagenet",
)
FAKE_PREFIX = (
    "fake:"  # fake:<name>: random examples with <name>'s shapes and classes (data/fake.py)
)
DATASET_FOLDER_PREFIX = "image_folder:"  # image_folder:/path: any labelled image folder
MODELS = (
    "madry_mnist",
    "mnist_large",
    "mnist_mlp",
    "preact_resnet18",
    "preact_resnet_tiny",
    "small_cnn",
    "wide_resnet",
    "wide_resnet_swish",
)
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
MIXED_PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")
# BN statistics the training attack runs with: moving, batch (moving ones updated), batch (kept)
ATTACK_BN_MODES = ("inference", "train", "batch")
SELECTIONS = ("none", "pgd")
EMA_BATCH_NORM = ("average", "copy")  # what the weight EMA does with BN moving statistics
SEEDS = Range(0, 2**32 - 1)  # numpy's seed range (Keras seeds it)


@dataclasses.dataclass(frozen=True)
class WideResNetShape:
    """Depth and width of --model=wide_resnet and wide_resnet_swish (Zagoruyko & Komodakis 2016),
    the model_kwargs of a TrainConfig with either model."""

    depth: int = setting(
        34, "WideResNet depth, 6n+4 (10, 16, 22, 28, 34, ...).", valid=Range(10), flag="wrn_depth"
    )
    width: int = setting(10, "WideResNet widening factor.", valid=AT_LEAST_ONE, flag="wrn_width")

    def __post_init__(self):
        check_settings(self)
        if (self.depth - 4) % 6:
            raise UserError(f"wrn_depth must be 6n+4 (10, 16, 22, 28, 34, ...), got {self.depth}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; built from flags by cli.train_config(). The fields are
    bin/train's flags (sub-configs contribute theirs, --eval_ in front for eval_attack)."""

    model_dir: str = setting(
        None,
        "Output folder: checkpoints/, tensorboard/, saved_model/, flags.txt, metrics.json. "
        "Re-running resumes.",
    )
    dataset: str = setting(
        "mnist5k",
        f"Dataset: {', '.join(DATASETS)}; {FAKE_PREFIX}<name> (random examples with that "
        "dataset's shapes and classes, offline: smoke tests); or "
        f"{DATASET_FOLDER_PREFIX}/path/to/folder.",
    )
    data_dir: Optional[str] = setting(None, "tensorflow-datasets data directory.")
    download: bool = setting(False, "Download the dataset if it is not in --data_dir.")
    # Not a closed choice: models.MODELS is a registry a Python user may add a network to;
    # bin/train checks --model against the built-in names (cli.train.recipe_config).
    model: str = setting("small_cnn", f"Network: {', '.join(MODELS)}.")
    model_kwargs: dict = dataclasses.field(default_factory=dict)  # e.g. WideResNetShape's
    mode: str = setting(
        "tla",
        "natural: CE on clean; pgd: Madry PGD-AT; tla: PGD-AT + triplet loss; trades: CE(x) + "
        "beta KL(p(x)||p(x')), x' maximising the KL (Zhang et al. 2019); mart: boosted CE(x') + "
        "beta KL(p(x)||p(x')) (1 - p(x)_y) (Wang et al. 2020). trades/mart attack from x + "
        "0.001 N(0,1) as their references (--kl_attack_start).",
        choices=MODES,
    )
    beta: float = setting(
        6.0,
        "Weight of the KL term of --mode=trades/mart (both references: 6 on CIFAR-10; TRADES "
        "MNIST: 1).",
        valid=NON_NEGATIVE,
    )
    base: str = setting(
        "pgd",
        "--mode=tla only: pgd adds the triplet term to CE on x' (the TLA authors); trades adds "
        "it to the TRADES objective and attacks TRADES' KL (ours, not the paper's).",
        choices=BASES,
    )
    awp_gamma: float = setting(
        0.0,
        "Adversarial weight perturbation (Wu et al. 2020): relative size gamma, each kernel "
        "moved by gamma x its norm (0: off; reference 5e-3 for TRADES-AWP on CIFAR-10, 1e-2 "
        "for AT-AWP).",
        valid=UNIT,
    )
    awp_warmup_steps: int = setting(
        0,
        "Training steps before AWP starts (the reference: 10 epochs for TRADES-AWP, 0 for AT-AWP).",
        valid=NON_NEGATIVE,
    )
    ema_decay: float = setting(
        0.0,
        "Exponential moving average of the weights, evaluated and exported instead of them "
        "(0: off; e.g. 0.999).",
        valid=UNIT_OPEN,
    )
    ema_warmup_steps: int = setting(
        0,
        "Steps during which the EMA is the weights themselves, after which its decay ramps up "
        "again (DM-Improves-AT: 2.5% of the steps, watrain.py:51; 0: from the first step).",
        valid=NON_NEGATIVE,
    )
    ema_batch_norm: str = setting(
        "average",
        "The EMA's batch-norm moving statistics: average them like the weights (timm), or copy "
        "the network's (DM-Improves-AT's update_bn, watrain.py:261-272).",
        choices=EMA_BATCH_NORM,
    )
    batch_size: int = setting(50, "Global batch size (split over replicas).", valid=AT_LEAST_ONE)
    extra_data: Tuple[str, ...] = setting(
        (),
        "Extra (e.g. generated) training data: uncompressed .npz files with 'image' uint8 "
        "[N,H,W,C] and 'label' int [N] (the keys of the published 1M DDPM and EDM CIFAR-10 "
        "sets), streamed from disk; with --extra_fraction.",
    )
    extra_fraction: float = setting(
        0.0,
        "Share of each training batch drawn from --extra_data: floor(batch_size x fraction) "
        "extra examples, the rest from the dataset (0: off; the references: 0.7, "
        "DM-Improves-AT core/utils/parser.py:55, semisup.py:235).",
        valid=UNIT_OPEN,
    )
    train_steps: int = setting(1000, "Total optimizer steps.", valid=AT_LEAST_ONE)
    optimizer: OptimizerConfig = sub_config(OptimizerConfig())
    label_smoothing: float = setting(0.0, "Label smoothing of the CE loss.", valid=UNIT_OPEN)
    augment: Optional[bool] = setting(
        None, "Force data augmentation on/off (default: per dataset)."
    )
    crop_padding: Optional[int] = setting(
        None,
        "Zero padding (pixels per side) before the random crop of the augmentation: crops shift "
        "by up to this many pixels (default: the dataset's, 4 for CIFAR and Tiny ImageNet).",
        valid=NON_NEGATIVE,
    )
    attack: AttackConfig = sub_config(
        AttackConfig(eps=0.3, step_size=0.01, steps=40), without=("restarts",)
    )
    eps_warmup_steps: int = setting(
        0,
        "Grow the training eps and step_size linearly from 0 over this many steps (0: full eps "
        "from the start).",
        valid=NON_NEGATIVE,
    )
    eval_attack: AttackConfig = sub_config(
        AttackConfig(eps=0.3, step_size=0.01, steps=100),
        prefix="eval_",
        without=("method", "restarts", "kl_start"),
    )
    triplet: TripletConfig = sub_config(TripletConfig())
    eval_every: int = setting(500, "Steps between evaluations and checkpoints.", valid=AT_LEAST_ONE)
    eval_examples: int = setting(
        1000,
        "Test examples for periodic evaluation; final metrics.json uses the whole test split "
        "unless --final_eval_examples.",
        valid=AT_LEAST_ONE,
    )
    final_eval_examples: Optional[int] = setting(
        None, "Limit of test examples for metrics.json.", valid=AT_LEAST_ONE
    )
    eval_batch_size: int = setting(200, "Batch size of evaluation.", valid=AT_LEAST_ONE)
    strategy: str = setting(
        "auto",
        "tf.distribute strategy: auto = MirroredStrategy over the local GPUs, else TF's default "
        "strategy on the CPU; one_device = the first GPU (default strategy without one); "
        "mirrored = all GPUs or all logical CPUs; multi_worker = TF_CONFIG cluster; tpu.",
        choices=STRATEGIES,
    )
    tpu: Optional[str] = setting(None, "TPU name or address for --strategy=tpu.")
    mixed_precision: str = setting(
        "none", "Keras dtype policy (logits and losses stay float32).", choices=MIXED_PRECISIONS
    )
    jit_compile: bool = setting(False, "XLA-compile the train step (slower on CPU).")
    seed: int = setting(0, "Seed of data order, augmentation and attack starts.", valid=SEEDS)
    deterministic: bool = setting(
        False,
        "Also pin TF's kernels (tf.config.experimental.enable_op_determinism; needed for "
        "bit-identical GPU runs, slower). Seeds always come from --seed, and a resumed run "
        "replays the same batches and attack starts.",
    )
    checkpoint_every: Optional[int] = setting(
        None, "Steps between checkpoints (default: --eval_every).", valid=AT_LEAST_ONE
    )
    keep_checkpoints: int = setting(3, "Checkpoints kept.", valid=AT_LEAST_ONE)
    init_checkpoint: Optional[str] = setting(
        None,
        "Initialise network weights from this checkpoint (e.g. a PGD-AT run's model_dir) before "
        "training.",
    )
    export: bool = setting(True, "Export the SavedModel at the end of training.")
    attack_bn_mode: str = setting(
        "inference",
        "Batch-norm mode of the TRAINING attack: train = batch statistics (Madry's PGD-AT, "
        "cifar10_challenge train.py:41,57); inference = moving statistics (the TLA authors' "
        "TLA attack, train_update_fast_triplet.py:546,611); batch = batch statistics, the "
        "moving ones left unchanged (DM-Improves-AT, gowal21uncovering/utils/trades.py:44-45).",
        choices=ATTACK_BN_MODES,
    )
    validation_examples: int = setting(
        0,
        "Hold the first N training examples out of training as a validation split (for "
        "--select_best); 0: none.",
        valid=NON_NEGATIVE,
    )
    select_best: str = setting(
        "none",
        "pgd: after each evaluation, score the evaluation attack on the validation split and "
        "keep the best checkpoint in DIR/best_checkpoint; the final metrics and the export use "
        "it (the authors selected on 500 test images; we never select on the test set).",
        choices=SELECTIONS,
    )
    eval_round_to_grid: bool = setting(
        False,
        "Round evaluation adversarial images to the 1/255 pixel grid, as the authors' CIFAR "
        "evaluation (pgd_attack.py:285-286).",
    )
    overfit: OverfitConfig = sub_config(OverfitConfig())
    # Every result-changing flag by name (cli.recipe_settings()); None (Python API): derived from
    # this config's own fields. Part of recipe.json: a resume must match it.
    settings: Optional[dict] = None
    allow_changes: Tuple[str, ...] = setting(
        (),
        "Settings a resumed run may change, e.g. train_steps,lr_boundaries,lr_values (without "
        "it a resume with other result-changing flags is refused); changes go to "
        "DIR/history.jsonl.",
    )

    def __post_init__(self):
        check_settings(self)
        if not self.model_dir:
            raise UserError("model_dir is required (where checkpoints and results go)")
        if self.checkpoint_every is None:
            object.__setattr__(self, "checkpoint_every", self.eval_every)
        self._check_extra_data()
        if not self.ema_decay and (self.ema_warmup_steps or self.ema_batch_norm != "average"):
            raise UserError(
                "ema_warmup_steps and ema_batch_norm set the weight EMA: pass --ema_decay"
            )
        check_mode(
            self.mode,
            base=self.base,
            label_smoothing=self.label_smoothing,
            attack=self.attack,
            positive_noise=self.triplet.positive_noise,
        )

    def extra_examples(self):
        """Examples of each training batch drawn from --extra_data: floor(batch_size x
        extra_fraction), the rest from the dataset, as DM-Improves-AT's sampler
        (core/data/semisup.py:235-236: `int(batch_size * unsup_fraction)`)."""
        return int(self.batch_size * self.extra_fraction)

    def _check_extra_data(self):
        """--extra_data and --extra_fraction go together. The files themselves are checked when
        a run starts (training.inputs.check_train_input), so a recipe parses on any machine."""
        if self.extra_fraction and not self.extra_data:
            raise UserError(
                f"extra_fraction {self.extra_fraction:g} needs --extra_data (the .npz files "
                "its examples come from)"
            )
        if self.extra_data and not self.extra_fraction:
            raise UserError(
                "extra_data needs --extra_fraction > 0 (the share of each batch drawn from it)"
            )
        if self.extra_data and self.extra_examples() < 1:
            raise UserError(
                f"extra_fraction {self.extra_fraction:g} x --batch_size {self.batch_size} "
                "draws no extra example per batch (it rounds down); raise either"
            )

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
