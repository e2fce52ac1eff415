"""Settings of bin/compare (methods x seeds, compare/ package): TF-free, validated here."""

import dataclasses

from tf_metric_robust.config.common import UserError


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Settings of one bin/compare: which entries and seeds, where, how (validated on creation).

    train_args: bin/train flags shared by every run (the flagfile's and the command line's);
    evaluate_args: extra bin/evaluate flags after EVALUATE_FLAGS; reference: the entry the
    results are relative to (PGD-AT); threads: CPU threads split between --parallel runs.
    """

    output: str
    entries: tuple
    seeds: tuple
    train_args: tuple = ()
    mode_flags: str = ""
    evaluate_examples: int = 0
    evaluate_args: tuple = ()
    parallel: int = 1
    threads: int = 0
    only: tuple = ()
    collect: bool = False
    reference: str = "pgd"

    def __post_init__(self):
        if not self.output:
            raise UserError("--output is required (the folder of every run and the results)")
        if not self.entries:
            raise UserError("--modes is empty: name at least one mode, e.g. --modes=pgd,tla")
        for name, values in (("--modes", self.entries), ("--seeds", self.seeds)):
            repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
            if repeated:
                raise UserError(f"{name} repeats {', '.join(repeated)}")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise UserError(f"--seeds must be whole numbers >= 0, got {list(self.seeds)}")
        if self.parallel < 1:
            raise UserError(f"--parallel must be >= 1, got {self.parallel}")
        if self.evaluate_examples < 0:
            raise UserError(
                f"--evaluate_examples must be >= 0 (0 = all), got {self.evaluate_examples}"
            )
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
