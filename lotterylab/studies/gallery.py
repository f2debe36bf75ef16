"""The gallery: reports/index.html, one offline page linking every study and scale that has a report, with the paper
figure it reproduces, its verdict counts from claims.json and the commit it names."""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from lotterylab.studies import catalog
from lotterylab.studies.claims import CLAIMS_FILE, VERDICTS

UNKNOWN_STUDY = "not a study found in notebooks/"


class GalleryError(ValueError):
    """A claims.json the gallery cannot read; the message is one line naming the file."""


def index_html(reports_root: str | Path) -> Path:
    return Path(reports_root) / "index.html"


def claims_json(out: Path) -> Path:
    return out / CLAIMS_FILE


def results_nc(out: Path) -> Path:
    return out / "results.nc"


@dataclass(frozen=True)
class Entry:
    """One report: which study and scale, what it reproduces, its claims' verdicts and the commit it names."""

    study: str
    scale: str  # the report directory's label: a scale, or the stem of the params file it ran with
    link: str  # relative to the reports root, URL-quoted
    description: str
    figure: str  # the seed paper's figures and tables; empty for a study of one's own
    verdicts: dict[str, int] | None  # None where the report has no claims.json
    commit: str  # full git revision; empty where neither claims.json nor results.nc names one


def read_claims(path: Path) -> tuple[dict[str, int], str]:
    """Verdict counts and the commit of one claims.json; anything malformed is a GalleryError naming the file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise GalleryError(f"{path}: unreadable ({type(error).__name__})") from None
    except json.JSONDecodeError as error:
        raise GalleryError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno})") from None
    if not isinstance(document, dict) or not isinstance(document.get("claims"), list):
        raise GalleryError(f"{path}: expected an object with a 'claims' list")
    commit = document.get("commit", "")
    if not isinstance(commit, str):
        raise GalleryError(f"{path}: commit: expected a git revision, got {type(commit).__name__}")
    counts: Counter[str] = Counter()
    for number, claim in enumerate(document["claims"], 1):
        verdict = claim.get("verdict") if isinstance(claim, dict) else None
        if verdict not in VERDICTS:
            raise GalleryError(f"{path}: claim {number}: verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        counts[verdict] += 1
    return {verdict: counts[verdict] for verdict in VERDICTS}, commit


def _results_commit(path: Path) -> str:
    """The git revision a study's results.nc records (attrs, written by grids.collect); empty when absent."""
    if not path.is_file():
        return ""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            revision = file.attrs.get("git_revision", "")
    except OSError:
        return ""
    return revision.decode() if isinstance(revision, bytes) else str(revision)


UNCOMMITTED = ("smoke", "lab")
"""Report folders .gitignore keeps out of the repository's reports/: its gallery never links them, so that the committed
index holds no link a clone lacks (another reports root lists them)."""


def entries(reports_root: str | Path) -> list[Entry]:
    """Every <study>/<scale>/report.html under `reports_root`: studies by name, scales in SCALES order, then others."""
    root = Path(reports_root)
    known = catalog.discover()
    order = {scale: position for position, scale in enumerate(catalog.SCALES)}
    found = []
    in_checkout = root.resolve() == (catalog.ROOT / "reports").resolve()
    for report in root.glob("*/*/report.html"):
        out = report.parent
        if in_checkout and out.name in UNCOMMITTED:
            continue
        study = known.get(out.parent.name)
        verdicts, commit = read_claims(claims_json(out)) if claims_json(out).is_file() else (None, "")
        found.append(Entry(study=out.parent.name, scale=out.name,
                           link="/".join(quote(part) for part in report.relative_to(root).parts),
                           description=study.description if study else UNKNOWN_STUDY,
                           figure=study.figure if study else "", verdicts=verdicts,
                           commit=commit or _results_commit(results_nc(out))))
    return sorted(found, key=lambda entry: (entry.study, order.get(entry.scale, len(order)), entry.scale))


STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #222; max-width: 66rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; }
p.lead { color: #555; margin-top: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
th { border-bottom: 2px solid #999; font-weight: 600; }
td.study { font-weight: 600; }
td.study span { display: block; font-weight: 400; color: #555; font-size: .9em; }
.verdict { display: inline-block; min-width: 1.6em; padding: 0 .35em; margin-right: .25em; border-radius: .3em;
           text-align: center; font-variant-numeric: tabular-nums; }
.holds { background: #d8f0d8; color: #14501a; }
.fails { background: #f6d5d5; color: #7a1010; }
.inconclusive { background: #ececec; color: #444; }
.verdict.zero { opacity: .4; }
td.verdicts { white-space: nowrap; }
.none { color: #888; font-style: italic; }
code { font-size: .9em; }
"""


def _verdicts(counts: dict[str, int] | None) -> str:
    if counts is None:
        return '<span class="none">no claims</span>'
    return " ".join(f'<span class="verdict {verdict}{" zero" * (counts[verdict] == 0)}">{counts[verdict]} {verdict}'
                    "</span>" for verdict in VERDICTS)


def _row(entry: Entry) -> str:
    commit = f"<code>{html.escape(entry.commit[:10])}</code>" if entry.commit else '<span class="none">unknown</span>'
    figure = html.escape(entry.figure) if entry.figure else '<span class="none">—</span>'
    return (f'<tr><td class="study">{html.escape(entry.study)}<span>{html.escape(entry.description)}</span></td>'
            f'<td>{figure}</td><td>{html.escape(entry.scale)}</td><td class="verdicts">{_verdicts(entry.verdicts)}</td>'
            f'<td>{commit}</td><td><a href="{html.escape(entry.link)}">report</a></td></tr>')


def _commits_line(found: list[Entry]) -> str:
    """Whether the reports come from one commit: stale reports are the first thing a reader should know about."""
    commits = sorted({entry.commit[:10] for entry in found if entry.commit})
    if len(commits) == 1:
        return f"All reports name lotterylab commit <code>{commits[0]}</code>."
    if commits:
        return f"The reports name {len(commits)} different commits: " + ", ".join(
            f"<code>{commit}</code>" for commit in commits) + "."
    return "No report names a commit."


def render(found: list[Entry]) -> str:
    """The gallery page: inline CSS, no script, no external resource, and no timestamp, so a rerun changes nothing."""
    names = len({entry.study for entry in found})
    reports = f"{len(found)} report{'s' * (len(found) != 1)} of {names} stud{'ies' if names != 1 else 'y'}"
    rows = "\n".join(_row(entry) for entry in found) or '<tr><td colspan="6" class="none">no reports yet</td></tr>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>lotterylab reports</title>
<style>{STYLE}</style>
</head>
<body>
<h1>lotterylab reports</h1>
<p class="lead">{reports}. Verdicts count the paper's claims each study tests (claims.json beside the report).
{_commits_line(found)}</p>
<table>
<thead><tr><th>Study</th><th>Paper figure</th><th>Scale</th><th>Verdicts</th><th>Commit</th><th></th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""


def write(reports_root: str | Path = "reports") -> Path:
    """Write `reports_root`/index.html from the reports under it now; return its path."""
    path = index_html(reports_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(entries(reports_root)), encoding="utf-8")
    return path
