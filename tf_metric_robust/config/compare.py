"""Settings of bin/compare (methods x seeds, compare/ package): TF-free, validated here."""

import dataclasses
import shlex
from typing import Tuple

from tf_metric_robust.config.common import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    UserError,
    check_settings,
    setting,
)
from tf_metric_robust.config.evaluation import SEEDS
from tf_metric_robust.config.training import MODES


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Settings of one bin/compare: which entries and seeds, where, how (validated on creation).

    train_args: bin/train flags shared by every run (the flagfile's and the command line's);
    threads: CPU threads split between --parallel runs.
    """

    output: str = setting(
        "runs/compare",
        "Folder of the comparison: <entry>/seed<k>/ model_dirs, logs/, results.json, "
        "results.md, PNGs, HParams.",
    )
    entries: Tuple[str, ...] = setting(
        ("natural", "pgd", "tla", "trades", "mart"),
        f"Entries to compare: modes of bin/train ({', '.join(MODES)}), the variant tla_authors "
        "(TLA with the authors' negatives and positives) or names defined in --mode_flags.",
        flag="modes",
    )
    seeds: Tuple[int, ...] = setting(
        (0, 1, 2), "Seeds: each entry trains once per seed.", valid=SEEDS
    )
    train_args: tuple = ()
    mode_flags: str = setting(
        "",
        "Per-entry bin/train flags, ';'-separated: 'trades:--beta=1;tla:--margin=0.1'; "
        "'NAME=MODE:--flag=v' defines a new entry (e.g. 'tla_long=tla:--train_steps=2400').",
    )
    evaluate_examples: int = setting(
        0,
        "Test examples of the shared evaluation (the first N; 0 = the whole test split).",
        valid=NON_NEGATIVE,
    )
    evaluate_flags: str = setting(
        "", "Extra bin/evaluate flags for every run, e.g. '--detection_weights=1 --suite_steps=20'."
    )
    parallel: int = setting(
        1, "Runs at once on this machine (CPU threads are split between them).", valid=AT_LEAST_ONE
    )
    threads: int = 0
    only: Tuple[str, ...] = setting(
        (),
        "Train and evaluate only these ENTRY:SEED pairs (one job of a cluster; aggregate with "
        "--collect afterwards); compare.plan.parse_only reads them as (entry, seed).",
    )
    collect: bool = setting(
        False,
        "Train nothing: aggregate the finished runs found in --output into results.json/.md, "
        "figures and HParams.",
    )
    reference: str = setting("pgd", "Entry the results are relative to (PGD-AT).")

    @property
    def evaluate_args(self):
        """--evaluate_flags as arguments of bin/evaluate (shell-quoted words)."""
        return tuple(shlex.split(self.evaluate_flags))

    def __post_init__(self):
        check_settings(self)
        if not self.output:
            raise UserError("--output is required (the folder of every run and the results)")
        if not self.entries:
            raise UserError("--modes is empty: name at least one mode, e.g. --modes=pgd,tla")
        for name, values in (("--modes", self.entries), ("--seeds", self.seeds)):
            repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
            if repeated:
                raise UserError(f"{name} repeats {', '.join(repeated)}")
        if not self.seeds:
            raise UserError("--seeds is empty: name at least one seed, e.g. --seeds=0,1,2")
        if self.collect and self.only:
            raise UserError(
                "--collect reads finished runs; it trains nothing, so --only has no meaning with it"
            )
        for arg in (*self.train_args, *self.evaluate_args):
            if not arg.startswith("--"):
                raise UserError(f"{arg!r} is not a --flag=value")
        owned = [
            a
            for a in self.train_args
            if a.split("=")[0].lstrip("-") in ("mode", "seed", "model_dir")
        ]
        if owned:
            raise UserError(
                f"{owned[0]}: bin/compare sets --mode, --seed and --model_dir of "
                "every run (use --modes, --seeds, --output)"
            )


__all__ = ["CompareConfig"]
