"""What an evaluation runs: settings with per-dataset literature defaults, and the plan of attacks.

Defaults: MNIST-like sets PGD-100, step 0.01, eps 0.3 (Madry et al., ICLR 2018, mnist_challenge);
CIFAR/SVHN-like sets PGD-20, step 1/255, eps 8/255 (the TLA evaluation, Mao et al. 2019).
Fashion-MNIST has no canonical setting and takes MNIST's. Detection (TLA paper section 5.3): PGD
at MNIST eps 0.3, 100 steps; CIFAR-10 eps 25/255, 20 steps; Tiny ImageNet eps 25/255, 30 steps. The plan lists each attack run once (runs
with equal settings are shared between the attack list, the sweeps, the sanity checks and
detection) and marks which runs lie inside the threat model and so count for robust accuracy.
"""

import dataclasses
import inspect
import json
from typing import Optional, Tuple

from tf_metric_robust.config import UserError
from tf_metric_robust.evaluation import suite as suite_lib
from tf_metric_robust.evaluation.sanity import Thresholds

DEFAULT_ATTACKS = ("fgsm", "pgd", "pgd_cw", "mifgsm")
# Attacks that take the threat model's step settings; others (APGD, suites) get eps and norm only
# and keep their own published defaults (e.g. APGD's 100 iterations, Croce & Hein 2020).
STEP_ATTACKS = ("fgsm", "pgd", "mifgsm", "adaptive_detector")
ATTACK_LOSSES = ("ce", "cw", "dlr")  # '<attack>_<loss>' selects a registered attack with that loss
_MNIST = dict(eps=0.3, step_size=0.01, steps=100, eps_sweep=(0.0, 0.1, 0.2, 0.3, 0.4),
              steps_sweep=(1, 10, 20, 40, 100), detection_eps=(0.3,), detection_steps=100,
              detection_covariance="per_class")
_CIFAR = dict(eps=8 / 255, step_size=1 / 255, steps=20,
              eps_sweep=tuple(e / 255 for e in (0, 2, 4, 6, 8, 12, 16)),
              steps_sweep=(1, 5, 10, 20, 50), detection_eps=(25 / 255,), detection_steps=20,
              detection_covariance="per_class")
_DEFAULTS = {"mnist": _MNIST, "mnist5k": _MNIST, "fashion_mnist": _MNIST, "cifar10": _CIFAR,
             "cifar100": _CIFAR, "svhn_cropped": _CIFAR}
# Detection settings of datasets without a full table entry (their attack settings are derived).
# Tiny ImageNet: the paper's eps and steps; 'tied' because 200 classes x 25 references cannot
# each support a 2048-d covariance (nor fit in memory as 200 float64 factors).
_DETECTION_ONLY = {"tiny_imagenet": dict(detection_eps=(25 / 255,), detection_steps=30,
                                         detection_covariance="tied")}
DETECTORS = ("gaussian", "knn")

def dataset_defaults(dataset):
    """Literature defaults {eps, step_size, steps, eps_sweep, steps_sweep, detection_eps,
    detection_steps, detection_covariance}."""
    if dataset not in _DEFAULTS:
        raise UserError(f"no default attack settings for dataset {dataset!r} (known: "
                        f"{', '.join(sorted(_DEFAULTS))}); pass eps, step_size and steps")
    return dict(_DEFAULTS[dataset])


def default_detection_covariance(dataset):
    """'tied' for Tiny ImageNet (200 classes), else 'per_class' (the paper's)."""
    return _DETECTION_ONLY.get(dataset, {}).get("detection_covariance", "per_class")


def derived_defaults(eps, steps):
    """Sweeps around an explicit threat model: eps x (0, 1/4, 1/2, 1, 3/2, 2), steps / 4 ... 2 x
    steps, detection at eps and `steps` with per-class covariances; for datasets without a table
    entry."""
    def radii(factors):
        return tuple(sorted({round(min(1.0, eps * f), 10) for f in factors}))

    return {"eps_sweep": radii((0, 0.25, 0.5, 1, 1.5, 2)),
            "steps_sweep": tuple(sorted({1, max(1, steps // 4), max(1, steps // 2), steps,
                                         2 * steps})),
            "detection_eps": radii((1,)), "detection_steps": steps,
            "detection_covariance": "per_class"}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to attack and how; None fields take the dataset's defaults in `resolve` (for other
    datasets eps, step_size and steps must be set, and the sweeps derive from them).

    eps, step_size on the [0,1] image scale; `attacks` are registry names or '<name>_<loss>';
    `eps_sweep`/`steps_sweep` () to skip; `large_eps` is the L-inf radius of the "unbounded attack"
    sanity check. Detection: `detector` ('gaussian', the paper's, or 'knn') heads the report (both
    are scored); `detection_eps` / `detection_steps` the PGD radii and steps (paper's per dataset);
    `detection_covariance` 'per_class' or 'tied' (detection.GaussianDetector);
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
        counts = [("steps", self.steps), ("restarts", self.restarts),
                  ("detection_reference", self.detection_reference),
                  ("detection_k", self.detection_k), ("detection_steps", self.detection_steps)]
        counts += [("steps_sweep", s) for s in self.steps_sweep or ()]
        for name, value in counts:
            if value is not None and (int(value) != value or value < 1):
                raise UserError(f"{name} must be an integer >= 1, got {value}")
        if self.norm not in ("linf", "l2"):
            raise UserError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if self.detection_score not in ("agreement", "similarity"):
            raise UserError(f"detection_score must be agreement or similarity, got "
                            f"{self.detection_score!r}")
        if self.detector not in DETECTORS:
            raise UserError(f"detector must be one of {', '.join(DETECTORS)}, got "
                            f"{self.detector!r}")
        if self.detection_covariance not in (None, "per_class", "tied"):
            raise UserError(f"detection_covariance must be per_class or tied, got "
                            f"{self.detection_covariance!r}")
        if any(not w >= 0 for w in self.detection_weights):
            raise UserError(f"detection_weights must be >= 0, got {self.detection_weights}")
        if not self.attacks:
            raise UserError("attacks must name at least one attack")
        suite_lib.check_settings(self.suite, self.suite_version, self.suite_steps,
                                 self.suite_queries)

    def resolve(self, dataset=None):
        """A copy with every None field filled from `dataset`'s defaults."""
        missing = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is None]
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
            raise UserError(f"{where} has no default attack settings (known: "
                            f"{', '.join(sorted(_DEFAULTS))}); set {', '.join(unset)}")
        else:
            defaults = derived_defaults(self.eps, self.steps)
        return dataclasses.replace(self, **{name: defaults[name] for name in missing})


@dataclasses.dataclass
class AttackSpec:
    """One attack run: registry key, call keyword arguments, the report groups it belongs to."""

    attack: str
    kwargs: dict
    counts_for_robust: bool
    groups: list = dataclasses.field(default_factory=list)
    keep_embedding: bool = False


@dataclasses.dataclass
class Plan:
    """Unique runs (name -> AttackSpec) and which of them serve each part of the report."""

    specs: dict = dataclasses.field(default_factory=dict)
    main: list = dataclasses.field(default_factory=list)
    eps_sweep: list = dataclasses.field(default_factory=list)  # (eps, name)
    steps_sweep: list = dataclasses.field(default_factory=list)  # (steps, name)
    roles: dict = dataclasses.field(default_factory=dict)  # sanity role -> name
    detection: list = dataclasses.field(default_factory=list)  # (eps, name)
    threat: tuple = ()  # (norm, eps)

    def add(self, name, attack, kwargs, group):
        """Adds a run (or returns the name of an existing run with the same settings)."""
        key = json.dumps([attack, kwargs], sort_keys=True)
        for existing, spec in self.specs.items():
            if json.dumps([spec.attack, spec.kwargs], sort_keys=True) == key:
                spec.groups.append(group)
                return existing
        if name in self.specs:
            name = f"{name}_{group}"
        norm, eps = self.threat
        inside = kwargs.get("norm", "linf") == norm and kwargs["eps"] <= eps + 1e-9
        self.specs[name] = AttackSpec(attack, dict(kwargs), inside, [group])
        return name


def resolve_attack(name, registry):
    """'pgd' -> ('pgd', {}); 'pgd_cw' -> ('pgd', {'loss': 'cw'}); UserError for unknown names."""
    if name in registry:
        return name, {}
    base, _, loss = name.rpartition("_")
    if base in registry and loss in ATTACK_LOSSES:
        return base, {"loss": loss}
    raise UserError(f"unknown attack {name!r}; known: {', '.join(sorted(registry))} (and "
                    f"'<attack>_<loss>' with loss in {', '.join(ATTACK_LOSSES)})")


def call_settings(fn, kwargs):
    """What a call really uses: `fn`'s JSON-friendly keyword defaults updated with `kwargs`."""
    defaults = {name: p.default for name, p in inspect.signature(fn).parameters.items()
                if p.default is not inspect.Parameter.empty and name != "seed"
                and isinstance(p.default, (bool, int, float, str, type(None)))}
    return {**defaults, **kwargs}


def _kwargs(fn, fixed, **settings):
    """The settings `fn` accepts, plus `fixed` (which it must accept)."""
    params = inspect.signature(fn).parameters
    unknown = [key for key in fixed if key not in params]
    if unknown:
        raise UserError(f"attack {fn.__name__} takes no {', '.join(unknown)} argument")
    settings.update(fixed)
    return {key: value for key, value in settings.items() if key in params}


def build_plan(config, registry, extra_attacks=()):
    """The runs of a resolved EvalConfig: the attack list, sweeps, sanity and detection runs.

    Sweeps and checks use registry['pgd'] with CE loss: the eps sweep keeps `steps` and scales the
    step with eps; the steps sweep keeps eps and step_size; MI-FGSM starts at x and steps by
    eps / steps (Dong et al. 2018); the large-eps check uses L-inf with step 2.5 * eps / steps
    (Madry et al. 2018).
    """
    c = config
    plan = Plan(threat=(c.norm, c.eps))
    base = dict(eps=c.eps, step_size=c.step_size, steps=c.steps, norm=c.norm, loss="ce",
                random_start=c.random_start, restarts=c.restarts)

    def pgd(group, name, **changes):
        settings = dict(base, restarts=1, **changes)
        return plan.add(name, "pgd", _kwargs(registry["pgd"], {}, **settings), group)

    if "pgd" not in registry:
        raise UserError("the attack registry needs 'pgd' (sweeps and sanity checks use it)")
    for name in c.attacks:
        attack, fixed = resolve_attack(name, registry)
        settings = dict(base) if attack in STEP_ATTACKS else dict(eps=c.eps, norm=c.norm)
        if attack == "mifgsm":  # Dong et al.: start at x, step eps / steps
            settings.update(random_start=False,
                            step_size=c.eps / c.steps if c.eps > 0 else c.step_size)
        plan.main.append(plan.add(name, attack, _kwargs(registry[attack], fixed, **settings),
                                  "attacks"))
    for name, attack, kwargs in extra_attacks:
        plan.main.append(plan.add(name, attack, dict(kwargs), "attacks"))
    def step_for(eps):
        return c.step_size * eps / c.eps if eps > 0 and c.eps > 0 else c.step_size

    for eps in c.eps_sweep:
        plan.eps_sweep.append((eps, pgd("eps_sweep", f"pgd_eps{eps:.4g}", eps=eps,
                                        step_size=step_for(eps))))
    for steps in c.steps_sweep:
        plan.steps_sweep.append((steps, pgd("steps_sweep", f"pgd_steps{steps}", steps=steps)))
    plan.roles["eps_zero"] = pgd("sanity", "pgd_eps0", eps=0.0)
    plan.roles["random_start"] = pgd("sanity", "pgd_random_start", random_start=True)
    plan.roles["zero_start"] = pgd("sanity", "pgd_zero_start", random_start=False)
    plan.roles["large_eps"] = pgd("sanity", "pgd_large_eps", eps=c.large_eps, norm="linf",
                                  step_size=2.5 * c.large_eps / c.steps, random_start=True)
    if c.detection:
        for eps in c.detection_eps:
            name = pgd("detection", f"pgd_eps{eps:.4g}_steps{c.detection_steps}", eps=eps,
                       step_size=step_for(eps), steps=c.detection_steps)
            plan.specs[name].keep_embedding = True
            plan.detection.append((eps, name))
    return plan
