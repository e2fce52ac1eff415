"""Shared pieces of the TF-free config layer: the user-error type and the allowed value ranges.

cli.py shows a Range in --help and checks flags with it; the config dataclasses check themselves
with the same ranges, so a setting is validated once whether it comes from a flag or from Python.
"""

import dataclasses
import math


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
NON_NEGATIVE = Range(0.0, math.inf, high_open=True)
UNIT = Range(0.0, 1.0)  # eps on the [0,1] pixel scale
UNIT_OPEN = Range(0.0, 1.0, high_open=True)  # momentum, label smoothing
