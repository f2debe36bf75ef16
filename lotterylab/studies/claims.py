"""The paper's claims a study tests, declared before any run, and their verdicts computed from the runs' numbers.

A claim compares condition A with condition B over seeds. Its decision rule is fixed when it is declared:

* `beats(...)` (A beats B): holds when the 95% CI over seeds of mean(A) - mean(B) lies above 0 (below 0 with
  `lower_is_better`), fails when it lies on the other side, inconclusive when it contains 0.
* `matches(...)` (A matches B within ±margin): holds when that CI lies inside [-margin, margin], fails when it lies
  wholly outside, inconclusive otherwise.
* `at_least(...)` (A is at least B, up to a margin: "A ≥ B"): holds when the CI lies above -margin, fails when it
  lies below -margin, inconclusive otherwise.

The CI is Student's t over the paired per-seed differences where A and B share seeds (every study pairs its arms by
seed), else Welch's. Fewer than 3 seeds with both values never gives a verdict but 'inconclusive'. `evaluate` writes
claims.json; `table` is the "What the data say" table a report opens with, and `sentence` states each result from
the same numbers, so that no hand-written sentence in a report states a result.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lotterylab.studies.intervals import Interval, difference_ci, finite, mean_ci, t_quantile  # noqa: F401

MIN_SEEDS = 3
VERDICTS = ("holds", "fails", "inconclusive")
CLAIMS_FILE = "claims.json"
REPORT_MARKER = "lotterylab-claims"  # metadata key of the notebook output a report moves to its top (reports.render)

class ClaimError(ValueError):
    """A claim declared or evaluated wrongly; one line naming the claim."""


@dataclass(frozen=True)
class Claim:
    """One declared claim: A against B on `quantity`, at `where` (e.g. "98% sparsity")."""

    id: str
    statement: str  # the paper's statement, quoted or paraphrased with its figure
    kind: str  # "beats", "matches" or "at_least"
    a: str  # condition A, as the report names it
    b: str
    quantity: str  # what is compared, with its unit, e.g. "test accuracy (%)"
    where: str = ""
    margin: float = 0.0  # matches: in the quantity's unit
    lower_is_better: bool = False  # beats: A beats B when A is lower (a loss, an eigenvalue, a barrier)

    @property
    def rule(self) -> str:
        diff = f"mean({self.a}) − mean({self.b})"
        if self.kind == "matches":
            return (f"holds if the 95% CI over seeds of {diff} lies inside ±{self.margin:g}; fails if it lies wholly "
                    f"outside; else inconclusive")
        if self.kind == "at_least":
            return (f"holds if the 95% CI over seeds of {diff} lies above −{self.margin:g}; fails if it lies below "
                    f"−{self.margin:g}; else inconclusive")
        side, other = ("below", "above") if self.lower_is_better else ("above", "below")
        return f"holds if the 95% CI over seeds of {diff} lies {side} 0; fails if it lies {other} 0; else inconclusive"


def _check_id(claim_id: str) -> None:
    if not claim_id or any(c.isspace() for c in claim_id):
        raise ClaimError(f"claim id {claim_id!r}: expected a word such as 'sculpt_beats_pai_0.98'")


def beats(claim_id: str, statement: str, a: str, b: str, quantity: str, where: str = "",
          lower_is_better: bool = False) -> Claim:
    """Declare "A beats B" (A higher on `quantity`, or lower with `lower_is_better`)."""
    _check_id(claim_id)
    return Claim(claim_id, statement, "beats", a, b, quantity, where, 0.0, lower_is_better)


def matches(claim_id: str, statement: str, a: str, b: str, quantity: str, margin: float, where: str = "") -> Claim:
    """Declare "A matches B within ±margin" (in the quantity's unit)."""
    _check_id(claim_id)
    if not margin > 0:
        raise ClaimError(f"claim {claim_id}: a 'matches' claim needs a margin > 0, got {margin}")
    return Claim(claim_id, statement, "matches", a, b, quantity, where, float(margin))


def at_least(claim_id: str, statement: str, a: str, b: str, quantity: str, margin: float, where: str = "") -> Claim:
    """Declare "A is at least B" (A ≥ B up to ±margin, in the quantity's unit): A may be better, not worse."""
    _check_id(claim_id)
    if not margin > 0:
        raise ClaimError(f"claim {claim_id}: an 'at_least' claim needs a margin > 0, got {margin}")
    return Claim(claim_id, statement, "at_least", a, b, quantity, where, float(margin))


def decide(claim: Claim, difference: Interval) -> str:
    """The verdict of the claim's rule on the CI of mean(A) - mean(B)."""
    if difference.n < MIN_SEEDS or not (math.isfinite(difference.low) and math.isfinite(difference.high)):
        return "inconclusive"
    low, high = difference.low, difference.high
    if claim.kind == "matches":
        if -claim.margin <= low and high <= claim.margin:
            return "holds"
        return "fails" if high < -claim.margin or low > claim.margin else "inconclusive"
    if claim.kind == "at_least":
        if low > -claim.margin:
            return "holds"
        return "fails" if high < -claim.margin else "inconclusive"
    if claim.lower_is_better:
        low, high = -high, -low
    if low > 0:
        return "holds"
    return "fails" if high < 0 else "inconclusive"


@dataclass
class Result:
    claim: Claim
    values: dict[str, Interval]
    difference: Interval
    verdict: str
    n_seeds: int
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        c = self.claim
        out = {"id": c.id, "statement": c.statement, "rule": c.rule, "verdict": self.verdict, "n_seeds": self.n_seeds,
               "kind": c.kind, "quantity": c.quantity, "where": c.where,
               "values": {name: interval.as_json() for name, interval in self.values.items()},
               "difference": self.difference.as_json()}
        if c.kind in ("matches", "at_least"):
            out["margin"] = c.margin
        if self.notes:
            out["notes"] = self.notes
        return out


def _per_seed(values) -> tuple[np.ndarray, np.ndarray | None]:
    """Values and their seed labels: an xarray DataArray reduced to its `seed` dim, or any 1-D array (no labels)."""
    if hasattr(values, "dims"):
        extra = [dim for dim in values.dims if dim != "seed"]
        if extra:
            raise ClaimError(f"values still have dims {extra} besides 'seed'; select one point first")
        seeds = np.asarray(values["seed"].values) if "seed" in values.dims else None
        return np.asarray(values.values, dtype=float).ravel(), seeds
    return np.asarray(values, dtype=float).ravel(), None


def evaluate(claim: Claim, a, b, notes: list[str] | None = None) -> Result:
    """Apply the claim's rule to per-seed values of A and B (DataArrays over `seed`, or arrays): paired by seed
    where both carry the same seeds."""
    (xa, sa), (xb, sb) = _per_seed(a), _per_seed(b)
    paired = sa is not None and sb is not None and len(sa) == len(sb) and bool(np.all(sa == sb))
    if sa is None and sb is None and len(xa) == len(xb):
        paired = True  # plain arrays of equal length are taken as seed-aligned
    difference = difference_ci(xa, xb, paired)
    verdict = decide(claim, difference)
    result_notes = list(notes or [])
    if difference.n < MIN_SEEDS:
        result_notes.append(f"only {difference.n} seed(s) with both values: no verdict below {MIN_SEEDS}")
    return Result(claim, {claim.a: mean_ci(xa), claim.b: mean_ci(xb)}, difference, verdict, difference.n,
                  result_notes)


def write(results: list[Result], output_dir: str | Path, study: str, scale: str) -> Path:
    """claims.json beside the report: study, scale, the lotterylab commit, and every claim's numbers and verdict."""
    from lotterylab.core import files
    from lotterylab.training.results import git_revision

    ids = [result.claim.id for result in results]
    repeated = sorted({claim_id for claim_id in ids if ids.count(claim_id) > 1})
    if repeated:
        raise ClaimError(f"claim id {repeated[0]!r} is declared twice")
    path = Path(output_dir) / CLAIMS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"study": study, "scale": scale, "commit": git_revision(),
                "claims": [result.as_json() for result in results]}
    files.atomic_write(path, (json.dumps(document, indent=1) + "\n").encode())
    return path


def counts(results: list[Result] | list[dict[str, Any]]) -> dict[str, int]:
    """Verdict counts, holds / fails / inconclusive."""
    verdicts = [r.verdict if isinstance(r, Result) else r["verdict"] for r in results]
    return {verdict: verdicts.count(verdict) for verdict in VERDICTS}


def _fmt(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    digits = 1 if unit in ("%", "points") else 3
    if value != 0 and not 10 ** -digits <= abs(value) < 1e5:
        return f"{value:.3g}"  # FLOPs, tiny barriers: three significant digits
    return f"{value:.{digits}f}"


def _unit(claim: Claim) -> str:
    return "%" if claim.quantity.endswith("(%)") else ""


def _ci(interval: Interval, unit: str, signed: bool = False) -> str:
    mean = _fmt(interval.mean, unit)
    if signed and math.isfinite(interval.mean) and interval.mean >= 0:
        mean = "+" + mean
    if not math.isfinite(interval.low):
        return f"{mean} (n={interval.n}, no CI)"
    return f"{mean} [{_fmt(interval.low, unit)}, {_fmt(interval.high, unit)}]"


def sentence(result: Result) -> str:
    """The result stated from its numbers: both means with their 95% CIs, the difference, and what the rule gives."""
    c, unit = result.claim, _unit(result.claim)
    points = " points" if unit == "%" else ""
    where = f" at {c.where}" if c.where else ""
    va, vb = result.values[c.a], result.values[c.b]
    diff = result.difference
    if c.kind == "matches":
        test = f"the margin ±{c.margin:g}{points}"
    elif c.kind == "at_least":
        test = f"−{c.margin:g}{points}"
    else:
        test = "0"
    return (f"{c.quantity[0].upper() + c.quantity[1:]}{where}: {c.a} {_ci(va, unit)}, {c.b} {_ci(vb, unit)}; "
            f"difference {_ci(diff, unit, signed=True)}{points} over {result.n_seeds} seeds, against {test}: "
            f"the claim {result.verdict}.")


COLOURS = {"holds": "#1a7f37", "fails": "#cf222e", "inconclusive": "#6e7781"}


def table(results: list[Result], title: str = "What the data say") -> str:
    """HTML: one row per claim (statement, where, A and B with 95% CIs, difference, rule, verdict), then the count."""
    import html

    rows = []
    for result in results:
        c, unit = result.claim, _unit(result.claim)
        notes = "".join(f"<br><small>{html.escape(note)}</small>" for note in result.notes)
        rows.append(
            "<tr>"
            f"<td><code>{html.escape(c.id)}</code></td>"
            f"<td>{html.escape(c.statement)}{notes}</td>"
            f"<td>{html.escape(c.quantity)}{', ' + html.escape(c.where) if c.where else ''}</td>"
            f"<td>{html.escape(c.a)}: {_ci(result.values[c.a], unit)}<br>{html.escape(c.b)}: "
            f"{_ci(result.values[c.b], unit)}</td>"
            f"<td>{_ci(result.difference, unit, signed=True)}</td>"
            f"<td><small>{html.escape(c.rule)}</small></td>"
            f"<td style='color:{COLOURS[result.verdict]};font-weight:bold'>{result.verdict}</td>"
            f"<td>{result.n_seeds}</td>"
            "</tr>")
    tally = counts(results)
    summary = ", ".join(f"{tally[v]} {v}" for v in VERDICTS)
    head = ("<tr><th>claim</th><th>paper's statement</th><th>quantity, where</th><th>A, B: mean [95% CI]</th>"
            "<th>A − B [95% CI]</th><th>decision rule (declared before the runs)</th><th>verdict</th><th>seeds</th>"
            "</tr>")
    return (f"<h2>{html.escape(title)}</h2><p>{len(results)} claims: {summary}. Means over seeds with 95% t "
            f"confidence intervals; A − B is paired by seed.</p>"
            "<style>.lotterylab-claims td, .lotterylab-claims th {text-align: left; vertical-align: top}</style>"
            f"<table class='lotterylab-claims'>{head}{''.join(rows)}</table>")


def declared(claims: list[Claim]) -> str:
    """HTML list of the claims and their rules, as declared before any run (the setup section shows it)."""
    import html

    items = "".join(f"<li><code>{html.escape(c.id)}</code>: {html.escape(c.statement)} Compared: "
                    f"{html.escape(c.a)} vs {html.escape(c.b)}, {html.escape(c.quantity)}"
                    f"{' at ' + html.escape(c.where) if c.where else ''}. Rule: {html.escape(c.rule)}.</li>"
                    for c in claims)
    return f"<h3>Claims tested, declared before the runs</h3><ul>{items}</ul>"


class Ledger:
    """A study's declared claims (before any run) and, later, their results: every declared claim must be evaluated
    once, and nothing undeclared can be."""

    def __init__(self, claims: list[Claim]):
        self.claims: dict[str, Claim] = {}
        for claim in claims:
            if claim.id in self.claims:
                raise ClaimError(f"claim id {claim.id!r} is declared twice")
            self.claims[claim.id] = claim
        self.results: dict[str, Result] = {}

    def evaluate(self, claim_id: str, a, b, notes: list[str] | None = None) -> Result:
        if claim_id not in self.claims:
            raise ClaimError(f"claim {claim_id!r} was not declared before the runs; declared: "
                             f"{', '.join(self.claims)}")
        if claim_id in self.results:
            raise ClaimError(f"claim {claim_id!r} is evaluated twice")
        self.results[claim_id] = evaluate(self.claims[claim_id], a, b, notes)
        return self.results[claim_id]

    def finish(self, output_dir: str | Path, study: str, scale: str) -> list[Result]:
        """Write claims.json once every declared claim has its result; return the results in declared order."""
        missing = [claim_id for claim_id in self.claims if claim_id not in self.results]
        if missing:
            raise ClaimError(f"claim {missing[0]!r} was declared but never evaluated")
        results = [self.results[claim_id] for claim_id in self.claims]
        write(results, output_dir, study, scale)
        return results


def show_declared(claims: list[Claim]) -> None:
    from IPython.display import HTML, display

    display(HTML(declared(claims)))


def show(results: list[Result]) -> None:
    """Display the "What the data say" table and one generated sentence per claim; the HTML report moves this output
    to its top (reports.render)."""
    import html

    from IPython.display import HTML, display

    sentences = "".join(f"<li><code>{html.escape(r.claim.id)}</code>: {html.escape(sentence(r))}</li>"
                        for r in results)
    display(HTML(f"{table(results)}<ul>{sentences}</ul>"), metadata={REPORT_MARKER: True})
