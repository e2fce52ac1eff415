"""Means and 95% confidence intervals over seeds (Student t), stdlib only.

With n seeds the interval is mean ± t(0.975, n-1) · s / sqrt(n), s the sample standard deviation;
a difference to the reference entry is paired by seed (the same seed gives both runs the same
initialisation and batch order), so its interval is the t interval of the per-seed differences.
"""

import math
import statistics

# Two-sided 95% quantiles t(0.975, df) for df = 1..30 (any t table, e.g. NIST/SEMATECH e-Handbook
# 1.3.6.7.2); beyond 30 the Cornish-Fisher expansion below is within 1e-4.
_T975 = (
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.3060,
    2.2622,
    2.2281,
    2.2010,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.0930,
    2.0860,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
)
_Z975 = 1.959964


def t975(df):
    """t quantile 0.975 (two-sided 95%) with df degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def mean_ci(values):
    """{'n', 'mean', 'ci' (half-width of the 95% interval; None below 2 values), 'values'}.

    None entries (a number a run did not produce) are left out and counted in 'missing'.
    """
    present = [float(v) for v in values if v is not None and math.isfinite(v)]
    result = {
        "n": len(present),
        "mean": None,
        "ci": None,
        "sd": None,
        "values": present,
        "missing": len(values) - len(present),
    }
    if present:
        result["mean"] = statistics.fmean(present)
    if len(present) >= 2:
        result["sd"] = statistics.stdev(present)
        result["ci"] = t975(len(present) - 1) * result["sd"] / math.sqrt(len(present))
    return result


# Per-seed differences closer than this are one value: on accuracies of a few hundred examples
# equal differences come out as e.g. 0.04000000000000004 and 0.040000000000000036.
_NO_SPREAD = 1e-9


def paired_difference(values, reference):
    """mean_ci of values[seed] - reference[seed] over the seeds both have ({seed: value} dicts),
    plus 'separates': True when the interval excludes 0 and has a width, and 'degenerate': True
    when every seed gave the same non-zero difference. A t interval of width 0 says nothing about
    the spread: with few seeds and accuracies on 100 examples equal differences are common."""
    seeds = sorted(
        s for s in values if s in reference and values[s] is not None and reference[s] is not None
    )
    result = mean_ci([values[s] - reference[s] for s in seeds])
    result["seeds"] = seeds
    has_interval = result["ci"] is not None
    spread = has_interval and result["sd"] > _NO_SPREAD
    result["separates"] = spread and abs(result["mean"]) > result["ci"]
    result["degenerate"] = has_interval and not spread and abs(result["mean"]) > _NO_SPREAD
    return result


def ratio_of_means(values, reference):
    """mean(values) / mean(reference) over the seeds both have, or None (training-cost ratio)."""
    seeds = [
        s for s in values if s in reference and values[s] is not None and reference[s] is not None
    ]
    denominator = sum(reference[s] for s in seeds)
    if not seeds or denominator <= 0:
        return None
    return sum(values[s] for s in seeds) / denominator


__all__ = ["mean_ci", "paired_difference", "ratio_of_means", "t975"]
