"""The gallery (reports/index.html): links, verdict counts, figures and commits from real files; one-line errors."""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import xarray as xr

from lotterylab import cli
from lotterylab.studies import catalog as studies
from lotterylab.studies import gallery

SHA = "0123456789abcdef0123456789abcdef01234567"


class Page(HTMLParser):
    """The table rows (cell texts) and the links of a gallery page."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self.rows[-1].append("")
        elif tag == "a":
            self.links.append(dict(attrs)["href"])

    def handle_data(self, data):
        if self.rows and self.rows[-1]:
            self.rows[-1][-1] += data

    def row(self, study: str, scale: str) -> list[str]:
        [row] = [row for row in self.rows if row and row[0].startswith(study) and row[2] == scale]
        return row


def _report(root: Path, study: str, scale: str, claims=None, revision: str | None = None) -> Path:
    out = root / study / scale
    out.mkdir(parents=True)
    (out / "report.html").write_text("<html><body>report</body></html>")
    if claims is not None:
        (out / "claims.json").write_text(claims if isinstance(claims, str) else json.dumps(claims))
    if revision is not None:  # a study's results.nc records the revision as an attribute, as grids.collect writes it
        xr.Dataset(attrs={"git_revision": revision}).to_netcdf(out / "results.nc", engine="h5netcdf")
    return out


def _claims(*verdicts: str, commit: str = SHA) -> dict:
    return {"study": "sculpt", "scale": "cpu", "commit": commit,
            "claims": [{"id": f"c{number}", "statement": "...", "rule": "...", "verdict": verdict, "n_seeds": 3}
                       for number, verdict in enumerate(verdicts)]}


@pytest.fixture
def reports(tmp_path):
    _report(tmp_path, "sculpt", "cpu", _claims("holds", "holds", "fails", "inconclusive"))
    _report(tmp_path, "sculpt", "smoke", revision="fedcba9876" + "0" * 30)
    _report(tmp_path, "label_noise", "my params", _claims("fails"))
    _report(tmp_path, "retired_study", "cpu")
    (tmp_path / "sharpness" / "cpu").mkdir(parents=True)  # results but no report: not listed
    (tmp_path / "sharpness" / "cpu" / "results.nc").write_bytes(b"")
    return tmp_path


def test_gallery_links_every_report_with_its_figure_verdicts_and_commit(reports):
    index = gallery.write(reports)
    assert index == reports / "index.html"
    page = Page(index.read_text())
    assert page.links == ["label_noise/my%20params/report.html", "retired_study/cpu/report.html",
                          "sculpt/smoke/report.html", "sculpt/cpu/report.html"]  # by study, then SCALES order
    assert all((index.parent / link.replace("%20", " ")).is_file() for link in page.links)

    sculpt = page.row("sculpt", "cpu")
    assert sculpt[1] == studies.get("sculpt").figure
    assert sculpt[3].split() == ["2", "holds", "1", "fails", "1", "inconclusive"]
    assert sculpt[4] == SHA[:10]
    assert page.row("sculpt", "smoke")[3:5] == ["no claims", "fedcba9876"]  # commit from results.nc
    assert page.row("label_noise", "my params")[3].split() == ["0", "holds", "1", "fails", "0", "inconclusive"]
    assert page.row("retired_study", "cpu")[0].endswith(gallery.UNKNOWN_STUDY)
    assert page.row("retired_study", "cpu")[4] == "unknown"
    assert "3 different commits" not in index.read_text() and "2 different commits" in index.read_text()


def test_gallery_is_offline_and_a_rerun_changes_nothing(reports):
    text = gallery.write(reports).read_text()
    assert "<script" not in text and "src=" not in text and "http" not in text and "@import" not in text
    assert gallery.write(reports).read_text() == text


def test_one_commit_is_said_once(tmp_path):
    _report(tmp_path, "sculpt", "cpu", _claims("holds"))
    _report(tmp_path, "coupling", "cpu", _claims("fails"))
    assert f"All reports name lotterylab commit <code>{SHA[:10]}</code>" in gallery.write(tmp_path).read_text()


def test_empty_reports_root(tmp_path):
    assert "no reports yet" in gallery.write(tmp_path / "reports").read_text()


def test_cli_gallery_prints_the_index(reports, capsys):
    assert cli.main(["gallery", "--reports", str(reports)]) == 0
    assert capsys.readouterr().out.strip() == str(reports / "index.html")


@pytest.mark.parametrize("claims, match", [
    ('{"claims": [', "not valid JSON (line 1, column 13)"),
    ("[]", "expected an object with a 'claims' list"),
    (json.dumps({"claims": {"a": 1}}), "expected an object with a 'claims' list"),
    (json.dumps(_claims("holds", "maybe")), "claim 2: verdict 'maybe' is not one of holds, fails, inconclusive"),
    (json.dumps({"claims": ["holds"]}), "claim 1: verdict None is not one of"),
    (json.dumps({**_claims("holds"), "commit": 7}), "commit: expected a git revision, got int"),
])
def test_malformed_claims_is_one_line_naming_the_file(reports, capsys, claims, match):
    _report(reports, "coupling", "cpu", claims)
    assert cli.main(["gallery", "--reports", str(reports)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and match in error
    assert error.startswith(f"lotterylab: error: {reports / 'coupling' / 'cpu' / 'claims.json'}: ")


def test_the_checkout_gallery_never_links_uncommitted_smoke_or_lab_reports(tmp_path, monkeypatch):
    from lotterylab.studies import catalog as studies

    for scale in ("cpu", "smoke", "lab"):
        folder = tmp_path / "reports" / "sculpt" / scale
        folder.mkdir(parents=True)
        (folder / "report.html").write_text("<html></html>")
    assert {entry.scale for entry in gallery.entries(tmp_path / "reports")} == {"cpu", "smoke", "lab"}
    monkeypatch.setattr(studies, "ROOT", tmp_path)  # as if tmp_path were the checkout
    assert [entry.scale for entry in gallery.entries(tmp_path / "reports")] == ["cpu"]
