"""95% Student's t intervals: of a mean over seeds, and of a difference of means (paired by seed, or Welch's).

The claims' decision rules (lotterylab.studies.claims) and the figures' bands and "±" (lotterylab.studies.plots) use
these, so that a table, a verdict and a band never disagree on an interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Two-sided 95% quantiles of Student's t by degrees of freedom (scipy.stats.t.ppf(0.975, df); tests/test_claims.py
# checks them), and the normal quantile beyond the table.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.306, 2.2622, 2.2281, 2.201, 2.1788, 2.1604,
         2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.093, 2.086, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518,
         2.0484, 2.0452, 2.0423)


def _t_series(df: float) -> float:
    """Cornish-Fisher expansion of the t quantile around the normal one (within 0.12% of scipy for df >= 3)."""
    z = 1.959963984540054
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4))


def t_quantile(df: float) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom: the table at whole df up to 30, else the
    expansion (corrected toward the exact value below 3 df; below 2, only reached with < 3 seeds and so never
    deciding a verdict, a rough log interpolation). Welch's df is fractional."""
    if not df >= 1:
        raise ValueError(f"t quantile needs at least 1 degree of freedom, got {df}")
    if float(df).is_integer() and df <= len(_T975):
        return _T975[int(df) - 1]
    if df >= 3:
        return _t_series(df)
    if df >= 2:
        return _t_series(df) * (1 + (_T975[1] / _t_series(2) - 1) * (3 - df))
    return math.exp(math.log(_T975[0]) * (2 - df) + math.log(_T975[1]) * (df - 1))


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def as_json(self) -> dict[str, Any]:
        return {"mean": finite(self.mean), "ci95": [finite(self.low), finite(self.high)], "n": self.n}


def finite(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def mean_ci(values) -> Interval:
    """Mean and 95% t interval of the finite values (NaN bounds below 2 values)."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if len(x) < 2:
        return Interval(float(x.mean()), math.nan, math.nan, 1)
    half = t_quantile(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(float(x.mean()), float(x.mean()) - half, float(x.mean()) + half, len(x))


def difference_ci(a, b, paired: bool) -> Interval:
    """95% CI of mean(a) - mean(b): over the per-seed differences when `paired` (NaN pairs dropped), else Welch."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"paired values differ in length: {a.shape} vs {b.shape}")
        return mean_ci(a - b)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        mean = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
        return Interval(mean, math.nan, math.nan, min(len(a), len(b)))
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
    half = t_quantile(max(df, 1.0)) * se
    mean = float(a.mean() - b.mean())
    return Interval(mean, mean - half, mean + half, min(len(a), len(b)))
