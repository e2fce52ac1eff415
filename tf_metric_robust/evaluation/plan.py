"""What an evaluation runs: the plan of attacks of a resolved EvalConfig (config/evaluation.py).

The plan lists each attack run once (runs with equal settings are shared between the attack list, the sweeps, the sanity checks and
detection) and marks which runs lie inside the threat model and so count for robust accuracy.
"""

import dataclasses
import inspect
import json

from tf_metric_robust.config import UserError
from tf_metric_robust.evaluation import sanity

# Attacks that take the threat model's step settings; others (APGD, suites) get eps and norm only
# and keep their own published defaults (e.g. APGD's 100 iterations, Croce & Hein 2020).
STEP_ATTACKS = ("fgsm", "pgd", "mifgsm", "adaptive_detector")
ATTACK_LOSSES = ("ce", "cw", "dlr")  # '<attack>_<loss>' selects a registered attack with that loss


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
    raise UserError(
        f"unknown attack {name!r}; known: {', '.join(sorted(registry))} (and "
        f"'<attack>_<loss>' with loss in {', '.join(ATTACK_LOSSES)})"
    )


def call_settings(fn, kwargs):
    """What a call really uses: `fn`'s JSON-friendly keyword defaults updated with `kwargs`."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
        and name != "seed"
        and isinstance(p.default, (bool, int, float, str, type(None)))
    }
    return {**defaults, **kwargs}


def _kwargs(fn, fixed, **settings):
    """The settings `fn` accepts, plus `fixed` (which it must accept)."""
    params = inspect.signature(fn).parameters
    unknown = [key for key in fixed if key not in params]
    if unknown:
        raise UserError(f"attack {fn.__name__} takes no {', '.join(unknown)} argument")
    settings.update(fixed)
    return {key: value for key, value in settings.items() if key in params}


def build_plan(config, registry):
    """The runs of a resolved EvalConfig: the attack list, sweeps, sanity and detection runs.

    Sweeps and checks use registry['pgd'] with CE loss: the eps sweep keeps `steps` and scales the
    step with eps; the steps sweep keeps eps and step_size; MI-FGSM starts at x and steps by
    eps / steps (Dong et al. 2018); the sanity checks' runs are sanity.plan_runs'.
    """
    c = config
    plan = Plan(threat=(c.norm, c.eps))
    base = dict(
        eps=c.eps,
        step_size=c.step_size,
        steps=c.steps,
        norm=c.norm,
        loss="ce",
        random_start=c.random_start,
        restarts=c.restarts,
    )

    def pgd(group, name, **changes):
        settings = dict(base, restarts=1, **changes)
        return plan.add(name, "pgd", _kwargs(registry["pgd"], {}, **settings), group)

    if "pgd" not in registry:
        raise UserError("the attack registry needs 'pgd' (sweeps and sanity checks use it)")
    for name in c.attacks:
        attack, fixed = resolve_attack(name, registry)
        settings = dict(base) if attack in STEP_ATTACKS else dict(eps=c.eps, norm=c.norm)
        if attack == "mifgsm":  # Dong et al.: start at x, step eps / steps
            settings.update(
                random_start=False, step_size=c.eps / c.steps if c.eps > 0 else c.step_size
            )
        plan.main.append(
            plan.add(name, attack, _kwargs(registry[attack], fixed, **settings), "attacks")
        )

    def step_for(eps):
        return c.step_size * eps / c.eps if eps > 0 and c.eps > 0 else c.step_size

    for eps in c.eps_sweep:
        # At eps 0 every step count returns x: one step, shared with the eps-0 sanity check.
        steps = {"steps": 1} if eps == 0 else {}
        plan.eps_sweep.append(
            (eps, pgd("eps_sweep", f"pgd_eps{eps:.4g}", eps=eps, step_size=step_for(eps), **steps))
        )
    for steps in c.steps_sweep:
        plan.steps_sweep.append((steps, pgd("steps_sweep", f"pgd_steps{steps}", steps=steps)))
    for role, name, changes in sanity.plan_runs(c):
        plan.roles[role] = pgd("sanity", name, **changes)
    if c.detection:
        for eps in c.detection_eps:
            name = pgd(
                "detection",
                f"pgd_eps{eps:.4g}_steps{c.detection_steps}",
                eps=eps,
                step_size=step_for(eps),
                steps=c.detection_steps,
            )
            plan.specs[name].keep_embedding = True
            plan.detection.append((eps, name))
    return plan
