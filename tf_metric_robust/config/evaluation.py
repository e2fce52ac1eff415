"""Evaluation settings (bin/evaluate): what to attack and how, per-dataset literature defaults,
the AutoAttack suite's choices and the sanity-check tolerances. TF-free, validated here.

Defaults: MNIST-like sets PGD-100, step 0.01, eps 0.3 (Madry et al., ICLR 2018, mnist_challenge);
CIFAR/SVHN-like sets PGD-20, step 1/255, eps 8/255 (the TLA evaluation, Mao et al. 2019).
Fashion-MNIST has no canonical setting and takes MNIST's. Detection (TLA paper section 5.3): PGD
at MNIST eps 0.3, 100 steps; CIFAR-10 eps 25/255, 20 steps; Tiny ImageNet eps 25/255, 30 steps.
"""

import dataclasses
from typing import Optional, Tuple

from tf_metric_robust.config.common import UserError
from tf_metric_robust.config.export import check_detector

SUITES = ("none", "autoattack")
EVAL_STRATEGIES = ("auto", "mirrored", "multi_worker")  # bin/evaluate --strategy (training's)
# AutoAttack versions (attacks/autoattack.py VERSIONS; a test keeps the two lists equal).
SUITE_VERSIONS = ("standard", "plus", "rand")

DEFAULT_ATTACKS = ("fgsm", "pgd", "pgd_cw", "mifgsm")
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


def check_suite(suite, version, steps, queries):
    """UserError on a bad suite setting."""
    if suite not in SUITES:
        raise UserError(f"suite must be one of {', '.join(SUITES)}, got {suite!r}")
    if version not in SUITE_VERSIONS:
        raise UserError(
            f"suite_version must be one of {', '.join(SUITE_VERSIONS)}, got {version!r}"
        )
    for name, value in (("suite_steps", steps), ("suite_queries", queries)):
        if int(value) != value or value < 1:
            raise UserError(f"{name} must be an integer >= 1, got {value}")


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

    eps: Optional[float] = None
    step_size: Optional[float] = None
    steps: Optional[int] = None
    norm: str = "linf"
    restarts: int = 1
    random_start: bool = True
    attacks: Tuple[str, ...] = DEFAULT_ATTACKS
    eps_sweep: Optional[Tuple[float, ...]] = None
    steps_sweep: Optional[Tuple[int, ...]] = None
    large_eps: float = 0.5
    seed: int = 0
    detection: bool = False
    detection_eps: Optional[Tuple[float, ...]] = None
    detection_steps: Optional[int] = None
    detector: str = "gaussian"
    detection_covariance: Optional[str] = None
    detection_weights: Tuple[float, ...] = (0.1, 1.0, 10.0)
    detection_reference: int = 5000
    detection_k: int = 50
    detection_score: str = "agreement"
    thresholds: Thresholds = Thresholds()
    suite: str = "none"
    suite_version: str = "standard"
    suite_steps: int = 100
    suite_queries: int = 5000

    def __post_init__(self):
        radii = [("eps", self.eps), ("large_eps", self.large_eps)]
        radii += [("eps_sweep", e) for e in self.eps_sweep or ()]
        radii += [("detection_eps", e) for e in self.detection_eps or ()]
        for name, value in radii:
            if value is not None and not 0.0 <= value <= 1.0:
                raise UserError(f"{name} must be in [0, 1] (images are on [0,1]), got {value}")
        if self.large_eps <= 0:
            raise UserError(f"large_eps must be > 0, got {self.large_eps}")
        if self.step_size is not None and self.step_size <= 0:
            raise UserError(f"step_size must be > 0, got {self.step_size}")
        check_detector(self)
        counts = [
            ("steps", self.steps),
            ("restarts", self.restarts),
            ("detection_steps", self.detection_steps),
        ]
        counts += [("steps_sweep", s) for s in self.steps_sweep or ()]
        for name, value in counts:
            if value is not None and (int(value) != value or value < 1):
                raise UserError(f"{name} must be an integer >= 1, got {value}")
        if self.norm not in ("linf", "l2"):
            raise UserError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if any(not w >= 0 for w in self.detection_weights):
            raise UserError(f"detection_weights must be >= 0, got {self.detection_weights}")
        if not self.attacks:
            raise UserError("attacks must name at least one attack")
        check_suite(self.suite, self.suite_version, self.suite_steps, self.suite_queries)

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

    model_dir: Optional[str] = None
    saved_model: Optional[str] = None
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    download: bool = False
    split: Optional[str] = None
    num_examples: Optional[int] = None
    batch_size: int = 200
    output: Optional[str] = None
    progress: bool = True
    tensorboard: bool = True
    config: EvalConfig = EvalConfig()
    strategy: str = "auto"
    worker_timeout: float = 120.0  # seconds without a heartbeat before a worker counts as lost

    def __post_init__(self):
        if bool(self.model_dir) == bool(self.saved_model):
            raise UserError("pass exactly one of --model_dir and --saved_model")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_examples is not None and self.num_examples < 1:
            raise UserError(f"num_examples must be >= 1, got {self.num_examples}")
        if self.strategy not in EVAL_STRATEGIES:
            raise UserError(
                f"strategy must be one of {', '.join(EVAL_STRATEGIES)}, got {self.strategy!r}"
            )
        if not self.worker_timeout > 0:
            raise UserError(f"worker_timeout must be > 0 seconds, got {self.worker_timeout}")
