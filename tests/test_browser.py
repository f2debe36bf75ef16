"""Reports in a real browser: headless Debian chromium without network opens every committed report, the gallery and
a freshly rendered smoke report; a console error, a failed or non-file: request, a broken link, a blank figure or a
legend inside a plot area fails."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from lotterylab.studies import gallery

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
CHROMIUM = Path("/usr/bin/chromium")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no {CHROMIUM} (Debian's chromium: apt-get install chromium)", allow_module_level=True)

REPORTS = Path(__file__).resolve().parent.parent / "reports"
NOT_COMMITTED = ("smoke", "lab")  # report labels that are git-ignored: smoke runs and interactive JupyterLab runs
COMMITTED = sorted(path for path in REPORTS.glob("*/*/report.html") if path.parent.name not in NOT_COMMITTED)
RENDER_TIMEOUT_MS = 20_000

# Runs in the page once every root has its view. A plot is blank when hiding its data renderers changes no pixel of
# its frame: that catches a failed draw, data outside the ranges and an empty figure alike.
FIGURES = """async (roots) => {
  const problems = [];
  const plots = [];
  const visit = view => {
    if (view.model.center !== undefined && view.canvas_view !== undefined) plots.push(view);
    for (const child of view.child_views ?? []) visit(child);
  };
  for (const id of roots) Bokeh.index[id] === undefined ? problems.push(`figure ${id}: not rendered`)
                                                        : visit(Bokeh.index[id]);
  const repainted = () => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
  const frame = view => {
    const layer = view.canvas_view.compose();
    const [ratio, box] = [layer.pixel_ratio, view.frame.bbox];
    return layer.canvas.getContext("2d").getImageData(Math.round(box.x * ratio), Math.round(box.y * ratio),
                                                      Math.round(box.width * ratio), Math.round(box.height * ratio)).data;
  };
  for (const view of plots) {
    const name = `figure ${JSON.stringify(view.model.title?.text || view.model.id)}`;
    if (view.model.center.some(renderer => renderer.type === "Legend"))
      problems.push(`${name}: legend inside the plot area (center panel)`);
    const shown = frame(view);
    const data = view.model.renderers.filter(renderer => renderer.visible);
    data.forEach(renderer => renderer.visible = false);
    let blank = true;
    for (let tries = 0; blank && tries < 20; tries++) {  // a busy machine may take more than one frame to repaint
      await repainted();
      const hidden = frame(view);
      blank = shown.every((value, index) => value === hidden[index]);
    }
    data.forEach(renderer => renderer.visible = true);
    await repainted();
    if (blank) problems.push(`${name}: blank, its data draws no pixel in the plot area`);
  }
  return problems;
}"""
ROOTS = "() => [...document.querySelectorAll('[data-root-id]')].map(element => element.dataset.rootId)"
RENDERED = """(roots) => window.Bokeh !== undefined && roots.every(id => Bokeh.index[id] !== undefined)
                          && Bokeh.documents.every(document => document.is_idle)"""
LINKS = "() => [...document.querySelectorAll('a[href]')].map(link => link.href)"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Chromium in a network namespace of its own where `unshare -n` works (root, or user namespaces allowed)."""
    executable = CHROMIUM
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], check=False, capture_output=True).returncode == 0:
        executable = tmp_path_factory.mktemp("chromium") / "chromium-offline"
        executable.write_text(f'#!/bin/sh\nexec {unshare} -n {CHROMIUM} "$@"\n')
        executable.chmod(0o755)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(executable))
        yield launched
        launched.close()


def problems(browser, page_file: Path, figures: bool = False) -> list[str]:
    """Everything wrong with `page_file` as chromium shows it (`figures`: it must show at least one bokeh figure);
    requests that would leave file:// are aborted."""
    found = []

    def local_only(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            found.append(f"request leaves file://: {route.request.url}")
            route.abort()

    def console(message):
        if message.type == "error":
            found.append(f"console error: {message.text}")

    page = browser.new_page()
    page.route("**/*", local_only)
    page.on("console", console)
    page.on("pageerror", lambda error: found.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: found.append(f"failed request: {request.url} ({request.failure})"))
    try:
        page.goto(page_file.as_uri())
        for link in page.evaluate(LINKS):
            parts = urlsplit(link)
            if parts.scheme == "file" and not Path(unquote(parts.path)).exists():
                found.append(f"broken link: {link}")
        roots = page.evaluate(ROOTS)
        if figures and not roots:
            found.append("no bokeh figure on the page")
        if roots:
            try:
                page.wait_for_function(RENDERED, arg=roots, timeout=RENDER_TIMEOUT_MS)
            except sync_api.TimeoutError:
                found.append(f"BokehJS did not render all of {roots} within {RENDER_TIMEOUT_MS / 1000:.0f} s")
            else:
                found += page.evaluate(FIGURES, roots)
    finally:
        page.close()
    return found


def _figures_page(path: Path) -> Path:
    """Three bokeh figures: a legend inside the plot, a legend in the right panel, data outside the ranges."""
    from bokeh.embed import file_html
    from bokeh.models import Legend
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    inside = figure(title="legend inside", width=300, height=200)
    inside.scatter([1, 2, 3], [1, 3, 2], size=10, legend_label="points")
    outside = figure(title="legend outside", width=300, height=200)
    outside.add_layout(Legend(items=[("points", [outside.scatter([1, 2, 3], [1, 3, 2], size=10)])]), "right")
    blank = figure(title="nothing in range", width=300, height=200, x_range=(0, 1), y_range=(0, 1))
    blank.scatter([5, 6], [5, 6], size=10)
    path.write_text(file_html([inside, outside, blank], INLINE, "checks"))
    return path


def test_checks_catch_a_legend_inside_and_a_blank_figure_and_pass_a_legend_outside(browser, tmp_path):
    assert problems(browser, _figures_page(tmp_path / "figures.html")) == [
        'figure "legend inside": legend inside the plot area (center panel)',
        'figure "nothing in range": blank, its data draws no pixel in the plot area',
    ]


def test_checks_catch_console_errors_requests_and_broken_links(browser, tmp_path):
    page = tmp_path / "page.html"
    page.write_text('<script>console.error("boom")</script><img src="https://example.org/x.png">'
                    '<img src="absent.png"><a href="absent.html">absent</a><a href="#top">anchor</a>')
    found = problems(browser, page)
    assert "console error: boom" in found
    assert "request leaves file://: https://example.org/x.png" in found
    assert any(line.startswith("failed request: ") and line.endswith("absent.png (net::ERR_FILE_NOT_FOUND)")
               for line in found)
    assert f"broken link: {(tmp_path / 'absent.html').as_uri()}" in found
    assert not any("#top" in line for line in found)


# A report without claims.json was rendered before claims.json and plots.py's legends outside the plot area: expected
# to fail until re-rendered (issue 14, item 7); a re-rendered report is held to every check.
STALE = pytest.mark.xfail(strict=False, reason="rendered before legends moved outside the plot area (no claims.json "
                                               "beside it); re-render it (issue 14, item 7)")


def _committed(report: Path):
    stale = () if gallery.claims_json(report.parent).is_file() else STALE
    return pytest.param(report, marks=stale, id=str(report.relative_to(REPORTS).parent))


@pytest.mark.parametrize("page", [*map(_committed, COMMITTED),
                                  pytest.param(REPORTS / "index.html", id="index.html")])
def test_committed_page(browser, page):
    if not page.is_file():
        pytest.skip(f"{page} is not there yet: `lotterylab gallery` writes it")
    assert problems(browser, page, figures=page.name == "report.html") == []
    if page.name == "index.html":  # the gallery links every committed report, and nothing else
        links = re.findall(r'<a href="([^"]+)"', page.read_text())
        assert sorted(REPORTS / unquote(link) for link in links) == COMMITTED


@pytest.mark.slow
def test_fresh_smoke_report_and_its_gallery(browser, tmp_path):
    reports = tmp_path / "reports"
    subprocess.run([sys.executable, "-m", "lotterylab.cli", "study", "sculpt", "--scale", "smoke",
                    "--reports", str(reports), "--runs", str(tmp_path / "runs")], check=True, cwd=tmp_path,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert problems(browser, reports / "sculpt" / "smoke" / "report.html", figures=True) == []
    index = gallery.index_html(reports)
    assert problems(browser, index) == []
    assert [entry.link for entry in gallery.entries(reports)] == ["sculpt/smoke/report.html"]
