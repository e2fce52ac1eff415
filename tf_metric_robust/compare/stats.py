"""Means and 95% confidence intervals over seeds (Student t), McNemar's exact test on the same
test images, and the smallest difference a design can detect; stdlib only.

With n seeds the interval is mean ± t(0.975, n-1) · s / sqrt(n), s the sample standard deviation;
a difference to the reference entry is paired by seed (the same seed gives both runs the same
initialisation and batch order), so its interval is the t interval of the per-seed differences.
Two models evaluated on the same images are also paired per image: McNemar's exact test (McNemar,
Psychometrika 1947; exact binomial form, e.g. Fagerland et al., BMC Med. Res. Methodol. 2013)
uses only the discordant images.
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
# One-sided 80% quantiles t(0.80, df) for df = 1..30 (the same tables); beyond 30 Cornish-Fisher.
_T80 = (
    1.3764,
    1.0607,
    0.9785,
    0.9410,
    0.9195,
    0.9057,
    0.8960,
    0.8889,
    0.8834,
    0.8791,
    0.8755,
    0.8726,
    0.8702,
    0.8681,
    0.8662,
    0.8647,
    0.8633,
    0.8620,
    0.8610,
    0.8600,
    0.8591,
    0.8583,
    0.8575,
    0.8569,
    0.8562,
    0.8557,
    0.8551,
    0.8546,
    0.8542,
    0.8538,
)
_Z80 = 0.841621


def t975(df):
    """t quantile 0.975 (two-sided 95%) with df degrees of freedom (df >= 1)."""
    return _t_quantile(df, _T975, _Z975)


def t80(df):
    """t quantile 0.80 (80% power) with df degrees of freedom (df >= 1)."""
    return _t_quantile(df, _T80, _Z80)


def _t_quantile(df, table, z):
    """The table's value for df <= 30, else the Cornish-Fisher expansion around the normal z."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(table):
        return table[df - 1]
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


def mcnemar(correct, reference_correct):
    """McNemar's exact test of two models on the same images: per-example correctness lists
    (bools or 0/1, image i of both lists the same image).

    Returns {'n', 'b' (images only `correct` gets right), 'c' (only the reference gets right),
    'difference' ((b - c) / n, the accuracy difference), 'p' (two-sided exact p: under equal
    accuracies b ~ Binomial(b + c, 1/2); p = min(1, 2 P(X <= min(b, c))), 1 when b + c = 0)}.
    """
    if len(correct) != len(reference_correct):
        raise ValueError(
            f"McNemar pairs the same images: got {len(correct)} and {len(reference_correct)}"
        )
    b = sum(1 for a, r in zip(correct, reference_correct) if a and not r)
    c = sum(1 for a, r in zip(correct, reference_correct) if r and not a)
    m = b + c
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1))
    p = 1.0 if m == 0 else min(1.0, 2 * tail / 2**m)  # exact integers, then one division
    n = len(correct)
    return {"n": n, "b": b, "c": c, "difference": (b - c) / n if n else None, "p": p}


def min_detectable_difference(sd, seeds, examples=None, discordant=None):
    """The smallest true difference in accuracy a seed-paired design detects with 80% power at
    two-sided alpha 0.05: (t(0.975, k-1) + t(0.80, k-1)) · sqrt(sd² / k + v / n).

    sd: the between-seed sd of the per-seed differences (the observed one); seeds: k >= 2.
    examples, discordant: n test images and the fraction of them on which the two models
    disagree in correctness; v = discordant is the per-image variance bound of a paired
    difference (McNemar's, (b + c) / n), the test-set sampling term; None leaves it out (a fixed
    test set). The sd term alone is the paired t test's formula (normal approximation to the
    noncentral t, e.g. Cohen 1988 ch. 2; within 0.05 power of the exact value for k >= 5).
    """
    if seeds < 2:
        raise ValueError(f"a between-seed sd needs >= 2 seeds, got {seeds}")
    variance = sd**2 / seeds
    if examples and discordant is not None:
        variance += discordant / examples
    return (t975(seeds - 1) + t80(seeds - 1)) * math.sqrt(variance)


__all__ = [
    "mcnemar",
    "mean_ci",
    "min_detectable_difference",
    "paired_difference",
    "ratio_of_means",
    "t80",
    "t975",
]
