"""What `bin/compare` runs: entries (a training mode plus its flags) x seeds, each one bin/train
run in its own model_dir followed by the one shared bin/evaluate (stdlib only, no TensorFlow).

An entry is a mode of `bin/train --mode` (natural, pgd, tla, trades, mart, ...), a named variant
(`tla_authors`: TLA with the authors' negatives and positives, docs/fidelity.md), or a name the
user defines with `--mode_flags="NAME=MODE:--flag=v ..."`.
"""

import dataclasses
import os
import shlex

from tf_metric_robust.config import UserError

# Named variants: entry -> (mode, flags). tla_authors is the authors' TLA recipe on top of any
# flagfile (configs/mnist.flags, docs/fidelity.md): negatives from an extra clean pool of
# mul_num x batch (MNIST mul_num 1, T:588-626), the other-image positive drawn from the data, weight
# decay 2e-4 (T:367) and separate batch-norm passes (T:252-273).
VARIANTS = {
    "tla_authors": (
        "tla",
        (
            "--negative_pool=extra",
            "--pool_multiplier=1",
            "--triplet_positive=other",
            "--other_positive=data",
            "--weight_decay=2e-4",
            "--separate_bn_passes",
        ),
    ),
    # Fast AT (Wong et al. 2020): PGD-AT with one FGSM step from a uniform random start, step
    # 1.25 eps (bin/train --train_attack=fgsm_rs).
    "fast_at": ("pgd", ("--train_attack=fgsm_rs", "--steps=1")),
}

# Flags a mode needs on a recipe written for another mode: TRADES and MART refuse label smoothing
# (both references train with plain CE), which the TLA recipes use.
MODE_DEFAULTS = {"trades": ("--label_smoothing=0",), "mart": ("--label_smoothing=0",)}

# The shared evaluation: PGD at the dataset's literature setting (MNIST PGD-100, CIFAR PGD-20),
# the standard AutoAttack, the paper's detection protocol with the adaptive detector attack.
EVALUATE_FLAGS = (
    "--attacks=pgd",
    "--eps_sweep=",
    "--steps_sweep=",
    "--suite=autoattack",
    "--detection",
    "--noprogress",
)

RECORD = "compare_run.json"  # per model_dir: commands, wall times, status (run.py)
REPORT = os.path.join("compare_evaluation", "report.json")  # the shared evaluation's report


# Flags whose value is a path: a re-run through a symlink, from another working directory or with
# an absolute --output names the same folders, so its recorded arguments still match.
PATH_FLAGS = frozenset({"--model_dir", "--output", "--data_dir", "--init_checkpoint"})


def _canonical(args):
    """The arguments with every PATH_FLAGS value resolved by os.path.realpath."""
    canonical = []
    for arg in args:
        name, equals, value = arg.partition("=")
        canonical.append(
            f"{name}={os.path.realpath(value)}" if equals and name in PATH_FLAGS else arg
        )
    return canonical


def same_arguments(recorded, planned):
    """True when a recorded bin/train or bin/evaluate call equals the planned one up to paths."""
    return recorded is not None and _canonical(recorded) == _canonical(planned)


class PlanError(UserError):
    """A bad --modes/--mode_flags/--only value (bin/compare prints it as one line, exit 2)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One (entry, seed): its model_dir and the bin/train and bin/evaluate arguments."""

    entry: str
    mode: str
    seed: int
    model_dir: str
    train_args: tuple
    evaluate_args: tuple

    @property
    def name(self):
        return f"{self.entry}:{self.seed}"

    @property
    def record_path(self):
        return os.path.join(self.model_dir, RECORD)

    @property
    def report_path(self):
        return os.path.join(self.model_dir, REPORT)


def parse_mode_flags(text, modes):
    """'tla:--a=1 --b;NAME=MODE:--c=2' -> ({entry: flags}, {NAME: MODE}); PlanError if malformed."""
    flags, defined = {}, {}
    for item in (part.strip() for part in (text or "").split(";")):
        if not item:
            continue
        head, colon, rest = item.partition(":")
        if not colon or not head.strip():
            raise PlanError(f"--mode_flags: {item!r} is not ENTRY:FLAGS or NAME=MODE:FLAGS")
        entry, equals, mode = (part.strip() for part in head.partition("="))
        if equals:
            if mode not in modes:
                raise PlanError(
                    f"--mode_flags: {entry}={mode}: {mode!r} is not a mode of "
                    f"bin/train ({', '.join(modes)})"
                )
            if entry in modes or entry in VARIANTS:
                raise PlanError(f"--mode_flags: {entry!r} is already an entry; pick a new name")
            defined[entry] = mode
        args = tuple(shlex.split(rest))
        bad = [arg for arg in args if not arg.startswith("--")]
        if bad:
            raise PlanError(f"--mode_flags: {entry}: {bad[0]!r} is not a --flag=value")
        flags[entry] = flags.get(entry, ()) + args
    return flags, defined


def entry_mode(entry, modes, defined):
    """The bin/train mode of an entry; PlanError naming the choices if it is none."""
    if entry in modes:
        return entry
    if entry in VARIANTS:
        return VARIANTS[entry][0]
    if entry in defined:
        return defined[entry]
    raise PlanError(
        f"--modes: {entry!r} is not a mode ({', '.join(modes)}), a variant "
        f"({', '.join(VARIANTS)}) or a name defined in --mode_flags (NAME=MODE:...)"
    )


def entry_flags(entry, mode, user_flags):
    """bin/train flags of an entry after the base flags: mode defaults, variant, user overrides
    (absl keeps the last value of a repeated flag, so later ones win)."""
    variant = VARIANTS[entry][1] if entry in VARIANTS else ()
    return MODE_DEFAULTS.get(mode, ()) + variant + user_flags.get(entry, ())


def parse_only(values):
    """['tla:1', 'pgd:0'] -> (('tla', 1), ('pgd', 0)); PlanError on a malformed item."""
    pairs = []
    for value in values:
        entry, colon, seed = value.strip().rpartition(":")
        if not colon or not entry or not seed.isdigit():
            raise PlanError(f"--only: {value!r} is not ENTRY:SEED (e.g. tla:1)")
        pairs.append((entry, int(seed)))
    return tuple(pairs)


def build(config, modes):
    """CompareConfig -> [Run], in --modes order then seed order (only the --only pairs if given).

    modes: bin/train's modes (config.MODES), so a mode added to bin/train is an entry here too.
    """
    user_flags, defined = parse_mode_flags(config.mode_flags, modes)
    for entry in user_flags:  # flags for a known entry left out of --modes are fine (unused)
        if entry not in config.entries and entry not in modes and entry not in VARIANTS:
            raise PlanError(
                f"--mode_flags names {entry!r}, which is neither in --modes "
                f"({', '.join(config.entries)}) nor a mode or variant"
            )
    runs = []
    for entry in config.entries:
        mode = entry_mode(entry, modes, defined)
        for seed in config.seeds:
            model_dir = os.path.join(config.output, entry, f"seed{seed}")
            train_args = (
                *config.train_args,
                f"--mode={mode}",
                f"--seed={seed}",
                *entry_flags(entry, mode, user_flags),
                f"--model_dir={model_dir}",
            )
            evaluate_args = (
                f"--model_dir={model_dir}",
                *EVALUATE_FLAGS,
                *(
                    (f"--num_examples={config.evaluate_examples}",)
                    if config.evaluate_examples
                    else ()
                ),
                *config.evaluate_args,
                f"--output={os.path.join(model_dir, REPORT)}",
            )
            runs.append(Run(entry, mode, seed, model_dir, train_args, evaluate_args))
    if config.only:
        known = {(run.entry, run.seed) for run in runs}
        missing = [f"{e}:{s}" for e, s in config.only if (e, s) not in known]
        if missing:
            raise PlanError(f"--only {', '.join(missing)}: not in --modes x --seeds")
        runs = [run for run in runs if (run.entry, run.seed) in set(config.only)]
    return runs


__all__ = [
    "EVALUATE_FLAGS",
    "MODE_DEFAULTS",
    "PlanError",
    "Run",
    "VARIANTS",
    "build",
    "entry_flags",
    "entry_mode",
    "parse_mode_flags",
    "parse_only",
]
