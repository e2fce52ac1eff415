"""Shared pieces of the TF-free config layer: the user-error type, the allowed value ranges and
the declaration of a setting (setting, sub_config, check_settings).

Each setting is declared once, on its config field; cli/ generates the flags from those fields
and shows each Range in --help, and the configs check themselves with the same declarations, so a
setting is validated the same way whether it comes from a flag or from Python.
"""

import dataclasses
import math
from typing import Optional, Tuple


class UserError(ValueError):
    """A mistake in what the user asked for: the CLIs print it as one line, no traceback."""


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed or open interval of allowed values; cli.py shows it in --help and checks flags."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value):
        if not math.isfinite(value):  # NaN and inf are never a setting
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self):
        low, high = (f"{v:g}" for v in (self.low, self.high))
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def check(self, name, value):
        """Raises UserError('<name> must be in <range>, got <value>') unless value is inside."""
        if value not in self:
            raise UserError(f"{name} must be in {self}, got {value}")


POSITIVE = Range(0.0, math.inf, low_open=True, high_open=True)
AT_LEAST_ONE = Range(1, math.inf, high_open=True)  # counts: steps, batch sizes, examples
NON_NEGATIVE = Range(0.0, math.inf, high_open=True)
UNIT = Range(0.0, 1.0)  # eps on the [0,1] pixel scale
UNIT_OPEN = Range(0.0, 1.0, high_open=True)  # momentum, label smoothing


def setting(default, help, *, valid=None, choices=None, flag=None):
    """A config field declared once: its default, its help text and what values it allows (a
    Range, or a tuple of choices). The flags of bin/ are generated from these declarations
    (cli/flags.py) and check_settings validates them, so the two can never disagree.

    `flag`: the flag's name where it differs from the field's (TripletConfig.mining is
    --triplet_mining); a sub-config's prefix comes in front of it (--eval_steps).
    """
    metadata = {"help": help, "valid": valid, "choices": choices, "flag": flag}
    return dataclasses.field(default=default, metadata=metadata)


# Settings several entry points share, declared here once (shared_setting makes each its field).
SHARED_SETTINGS = {
    "data_dir": dict(default=None, help="tensorflow-datasets data directory."),
    "download": dict(default=False, help="Download the dataset if it is not in --data_dir."),
}


def shared_setting(name, table=None):
    """A fresh field for the shared declaration `name` of `table` (SHARED_SETTINGS by default):
    one declaration, a field on every config that has the setting."""
    return setting(**(table or SHARED_SETTINGS)[name])


def sub_config(default, *, prefix="", without=()):
    """A field holding another config whose settings are flags too, named `prefix` + theirs
    (TrainConfig.eval_attack: --eval_eps, ...); `without` names settings that get no flag there
    (the evaluation attack has no --eval_train_attack)."""
    return dataclasses.field(default=default, metadata={"prefix": prefix, "without": without})


def flag_name(field):
    """The flag name a setting declares (without a sub-config's prefix)."""
    return field.metadata.get("flag") or field.name


def check_settings(config):
    """UserError naming the first setting of `config` outside its declared range or choices.

    None passes where the declared default is None (an optional setting: a default chosen
    later); tuples are checked item by item.
    """
    for field in dataclasses.fields(config):
        valid, choices = field.metadata.get("valid"), field.metadata.get("choices")
        if valid is None and choices is None:
            continue
        value, name = getattr(config, field.name), flag_name(field)
        if value is None and field.default is None:
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if choices is not None and item not in choices:
                raise UserError(f"{name} must be one of {', '.join(choices)}; got {item!r}")
            if valid is not None:
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    raise UserError(f"{name} must be a number in {valid}, got {item!r}")
                if field.type in (int, Optional[int], Tuple[int, ...]) and item != int(item):
                    raise UserError(f"{name} must be a whole number, got {item}")
                valid.check(name, item)
