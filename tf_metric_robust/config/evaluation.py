"""Evaluation settings (bin/evaluate): what to attack and how, per-dataset literature defaults,
the AutoAttack suite's choices and the sanity-check tolerances. TF-free, validated here.

Defaults: MNIST-like sets PGD-100, step 0.01, eps 0.3 (Madry et al., ICLR 2018, mnist_challenge);
CIFAR/SVHN-like sets PGD-20, step 1/255, eps 8/255 (the TLA evaluation, Mao et al. 2019).
Fashion-MNIST has no canonical setting and takes MNIST's. Detection (TLA paper section 5.3): PGD
at MNIST eps 0.3, 100 steps; CIFAR-10 eps 25/255, 20 steps; Tiny ImageNet eps 25/255, 30 steps.
"""

import dataclasses
from typing import Optional, Tuple

from tf_metric_robust.config.common import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    Range,
    UserError,
    check_settings,
    setting,
    shared_setting,
    sub_config,
)
from tf_metric_robust.config.export import detector_setting
from tf_metric_robust.config.training import NORMS

SUITES = ("none", "autoattack")
EVAL_STRATEGIES = ("auto", "mirrored", "multi_worker")  # bin/evaluate --strategy (training's)
# AutoAttack versions (attacks/autoattack.py VERSIONS; a test keeps the two lists equal).
SUITE_VERSIONS = ("standard", "plus", "rand")

DEFAULT_ATTACKS = ("fgsm", "pgd", "pgd_cw", "mifgsm")
SEEDS = Range(0, 2**32 - 1)  # numpy's seed range (Keras seeds it)
_MNIST = dict(
    eps=0.3,
    step_size=0.01,
    steps=100,
    eps_sweep=(0.0, 0.1, 0.2, 0.3, 0.4),
    steps_sweep=(1, 10, 20, 40, 100),
    detection_eps=(0.3,),
    detection_steps=100,
)
_CIFAR = dict(
    eps=8 / 255,
    step_size=1 / 255,
    steps=20,
    eps_sweep=tuple(e / 255 for e in (0, 2, 4, 6, 8, 12, 16)),
    steps_sweep=(1, 5, 10, 20, 50),
    detection_eps=(25 / 255,),
    detection_steps=20,
)
_DEFAULTS = {
    "mnist": _MNIST,
    "mnist5k": _MNIST,
    "fashion_mnist": _MNIST,
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
    "svhn_cropped": _CIFAR,
}
# Detection settings of datasets without a full table entry (their attack settings are derived).
# Tiny ImageNet: the paper's eps and steps (its covariance: config.export.detector_settings).
_DETECTION_ONLY = {"tiny_imagenet": dict(detection_eps=(25 / 255,), detection_steps=30)}


def dataset_defaults(dataset):
    """Literature defaults {eps, step_size, steps, eps_sweep, steps_sweep, detection_eps,
    detection_steps}."""
    if dataset not in _DEFAULTS:
        raise UserError(
            f"no default attack settings for dataset {dataset!r} (known: "
            f"{', '.join(sorted(_DEFAULTS))}); pass eps, step_size and steps"
        )
    return dict(_DEFAULTS[dataset])


def derived_defaults(eps, steps):
    """Sweeps around an explicit threat model: eps x (0, 1/4, 1/2, 1, 3/2, 2), steps / 4 ... 2 x
    steps, detection at eps and `steps`; for datasets without a table entry."""

    def radii(factors):
        return tuple(sorted({round(min(1.0, eps * f), 10) for f in factors}))

    return {
        "eps_sweep": radii((0, 0.25, 0.5, 1, 1.5, 2)),
        "steps_sweep": tuple(sorted({1, max(1, steps // 4), max(1, steps // 2), steps, 2 * steps})),
        "detection_eps": radii((1,)),
        "detection_steps": steps,
    }


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Tolerances of the checks. Accuracy tolerances are absolute and never below one example."""

    accuracy_tolerance: float = 0.01  # allowed rise of accuracy with eps / steps / vs clean
    bound_tolerance: float = 1e-6  # float32 rounding of x +- eps
    max_zero_gradient_fraction: float = 0.01
    large_eps_max_accuracy: float = 0.1
    start_gap_tolerance: float = 0.05


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to attack and how; None fields take the dataset's defaults in `resolve` (for other
    datasets eps, step_size and steps must be set, and the sweeps derive from them).

    eps, step_size on the [0,1] image scale; `attacks` are registry names or '<name>_<loss>';
    `eps_sweep`/`steps_sweep` () to skip; `large_eps` is the L-inf radius of the "unbounded attack"
    sanity check. Detection: `detector` ('gaussian', the paper's, or 'knn') heads the report (both
    are scored); `detection_eps` / `detection_steps` the PGD radii and steps (paper's per dataset);
    `detection_covariance` 'per_class' or 'tied' (detection.GaussianDetector; None, also after
    `resolve`: config.export.detector_settings picks it when the detectors are fitted);
    `detection_weights` the adaptive attack's sweep of c (() skips it). `suite`
    'autoattack' also runs AutoAttack (suite.py; `suite_steps` APGD iterations and
    `suite_queries` Square queries, the paper's 100 and 5000) into the worst case.
    """

    attacks: Tuple[str, ...] = setting(
        DEFAULT_ATTACKS,
        "Attacks at --eps: names of the attack registry (fgsm, pgd, mifgsm, ...) or "
        "<name>_<loss> (pgd_cw).",
    )
    eps: Optional[float] = setting(
        None,
        "Threat-model radius on the [0,1] image scale (default: MNIST 0.3, CIFAR 8/255).",
        valid=UNIT,
    )
    step_size: Optional[float] = setting(
        None, "PGD step size (default: MNIST 0.01, CIFAR 1/255).", valid=POSITIVE
    )
    steps: Optional[int] = setting(
        None, "PGD steps (default: MNIST 100, CIFAR 20).", valid=AT_LEAST_ONE
    )
    norm: str = setting("linf", "Threat-model norm.", choices=NORMS)
    restarts: int = setting(1, "Random restarts of each PGD attack at --eps.", valid=AT_LEAST_ONE)
    random_start: bool = setting(True, "PGD starts at a random point of the ball.")
    eps_sweep: Optional[Tuple[float, ...]] = setting(
        None,
        "PGD radii of the eps sweep; empty to skip (default: MNIST 0,0.1,...,0.4; CIFAR "
        "0,2/255,...,16/255).",
        valid=UNIT,
    )
    steps_sweep: Optional[Tuple[int, ...]] = setting(
        None,
        "PGD step counts of the steps sweep; empty to skip (default: MNIST 1,10,20,40,100; "
        "CIFAR 1,5,10,20,50).",
        valid=AT_LEAST_ONE,
    )
    large_eps: float = setting(
        0.5,
        "L-inf radius of the 'unbounded attack' sanity check (accuracy must fall near 0).",
        valid=Range(0.0, 1.0, low_open=True),
    )
    seed: int = setting(0, "Seed of the attacks' random starts.", valid=SEEDS)
    detection: bool = setting(
        False,
        "Also run detection in the embedding space as the TLA paper (Gaussian and kNN "
        "detectors, adaptive attack, ROC PNG).",
    )
    detection_eps: Optional[Tuple[float, ...]] = setting(
        None,
        "PGD radii scored by the detectors (default, the paper's: MNIST 0.3; CIFAR and Tiny "
        "ImageNet 25/255).",
        valid=UNIT,
    )
    detection_steps: Optional[int] = setting(
        None,
        "PGD steps of the detection attacks (default, the paper's: MNIST 100, CIFAR 20, Tiny "
        "ImageNet 30).",
        valid=AT_LEAST_ONE,
    )
    detector: str = detector_setting("detector")
    detection_covariance: Optional[str] = detector_setting("detection_covariance")
    detection_weights: Tuple[float, ...] = setting(
        (0.1, 1.0, 10.0),
        "Weights c of the adaptive attack on each detector (margin + c x detector "
        "confidence); empty to skip it.",
        valid=NON_NEGATIVE,
    )
    detection_reference: int = detector_setting("detection_reference")
    detection_k: int = detector_setting("detection_k")
    detection_score: str = detector_setting("detection_score")
    thresholds: Thresholds = Thresholds()
    suite: str = setting(
        "none",
        "Also run a standard attack suite into the worst case: autoattack = APGD-CE, APGD-T "
        "(DLR), FAB-T, Square (Croce & Hein 2020) at --eps/--norm/--seed; report.json 'suite' "
        "section.",
        choices=SUITES,
    )
    suite_version: str = setting(
        "standard",
        "AutoAttack version (plus: APGD-CE, APGD-DLR, FAB with 5 restarts each, Square, APGD-T, "
        "FAB-T, as the reference; rand: APGD-CE and APGD-DLR averaging 20 samples of a "
        "randomised model per gradient).",
        choices=SUITE_VERSIONS,
    )
    suite_steps: int = setting(
        100,
        "APGD and FAB-T iterations of the suite (paper: 100; fewer for a quick, weaker check).",
        valid=AT_LEAST_ONE,
    )
    suite_queries: int = setting(
        5000, "Square queries of the suite (paper: 5000).", valid=AT_LEAST_ONE
    )

    def __post_init__(self):
        check_settings(self)
        if not self.attacks:
            raise UserError("attacks must name at least one attack")

    def resolve(self, dataset=None):
        """A copy with every None field but detection_covariance filled from `dataset`'s
        defaults (the covariance depends on the model and reference: detector_settings)."""
        missing = [
            f.name
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is None and f.name != "detection_covariance"
        ]
        if "detection_eps" in missing and not self.detection:
            return dataclasses.replace(self, detection_eps=()).resolve(dataset)
        extra = {k: v for k, v in _DETECTION_ONLY.get(dataset, {}).items() if k in missing}
        if extra:
            return dataclasses.replace(self, **extra).resolve(dataset)
        if not missing:
            return self
        if dataset in _DEFAULTS:
            defaults = dataset_defaults(dataset)
        elif None in (self.eps, self.step_size, self.steps):
            unset = [n for n in ("eps", "step_size", "steps") if getattr(self, n) is None]
            where = "no dataset" if dataset is None else f"dataset {dataset!r}"
            raise UserError(
                f"{where} has no default attack settings (known: "
                f"{', '.join(sorted(_DEFAULTS))}); set {', '.join(unset)}"
            )
        else:
            defaults = derived_defaults(self.eps, self.steps)
        return dataclasses.replace(self, **{name: defaults[name] for name in missing})


@dataclasses.dataclass(frozen=True)
class EvaluateRun:
    """What bin/evaluate was asked for; built from flags by cli.evaluate_config().

    batch_size: examples per shard, the unit each replica attacks (so the results do not depend
    on the replicas); strategy: 'auto' (all local GPUs, else the CPU), 'mirrored' (all GPUs or
    all logical CPUs), 'multi_worker' (the TF_CONFIG workers share the shards, each on its local
    devices as 'auto').
    """

    model_dir: Optional[str] = setting(
        None,
        "A bin/train run: its latest checkpoint (or its saved_model/) is evaluated; "
        "recipe.json gives the dataset.",
    )
    saved_model: Optional[str] = setting(
        None,
        "Evaluate this SavedModel instead (signature serving_default: images [N,H,W,C] in "
        "[0,1] -> logits, embedding). SECURITY: a SavedModel is a program (its ops can read "
        "and write files); evaluate one you did not make only in a sandbox without secrets or "
        "network (docs/serving.md, Security).",
    )
    dataset: Optional[str] = setting(
        None,
        "Dataset, a name of bin/train's --dataset (default: the run's recipe.json; required "
        "for a SavedModel outside a run).",
    )
    data_dir: Optional[str] = shared_setting("data_dir")
    download: bool = shared_setting("download")
    split: Optional[str] = setting(None, "Split to evaluate (default: the test split).")
    num_examples: Optional[int] = setting(
        None, "Evaluate only the first N examples.", valid=AT_LEAST_ONE
    )
    batch_size: int = setting(
        200,
        "Examples per attack call on each replica (a shard: results do not depend on the "
        "number of replicas or workers).",
        valid=AT_LEAST_ONE,
    )
    output: Optional[str] = setting(
        None,
        "report.json path or its folder (default: <model_dir>/evaluation/<name>/report.json); "
        "figures go next to it, TensorBoard into <report stem>_tensorboard/<name> beside it.",
    )
    robustbench_json: Optional[str] = setting(
        None,
        "Also write the AutoAttack result (needs --suite=autoattack) to this path as a "
        "RobustBench model_info JSON: clean and AutoAttack accuracy, eps, threat model, "
        "examples, architecture, additional data, our version and per-example robust flags "
        "(docs/evaluation.md).",
    )
    progress: bool = setting(
        True,
        "Show a progress bar per attack run on a terminal (the plan and one line per finished "
        "run, with its time, are printed either way).",
    )
    tensorboard: bool = setting(True, "Write TensorBoard summaries.")
    config: EvalConfig = sub_config(EvalConfig())
    strategy: str = setting(
        "auto",
        "Devices: auto = all local GPUs (else the CPU); mirrored = all GPUs or all logical "
        "CPUs; multi_worker = the TF_CONFIG workers share the examples, each on its local "
        "devices, through the output folder (a file system all see); the chief writes the "
        "report. A re-run resumes from the finished shards.",
        choices=EVAL_STRATEGIES,
    )
    worker_timeout: float = setting(
        120.0,
        "Seconds without a heartbeat from a worker whose shards are missing before the others "
        "give up on it.",
        valid=Range(1.0),
    )

    def __post_init__(self):
        if bool(self.model_dir) == bool(self.saved_model):
            raise UserError("pass exactly one of --model_dir and --saved_model")
        check_settings(self)
        if self.robustbench_json and self.config.suite != "autoattack":
            raise UserError("--robustbench_json needs --suite=autoattack (its accuracy)")
