"""Check a study notebook in a real JupyterLab, as a researcher opens it: headless Debian Chromium, network off.

One PASS/FAIL line per check; exit 1 on any FAIL, 2 when JupyterLab, Playwright or Chromium is missing:
  committed-unmodified  notebooks/<study>.ipynb opens and starts its kernel without being marked modified
  no-stderr             a copy set to the smoke scale runs all its cells with no stderr box and no error
  progress              ... and shows the study's progress bar, runs done of the total
  plots                 ... and renders its bokeh plots (canvases present, none blank)
  report-trusted        the executed notebook `lotterylab study <study> --scale smoke` writes opens trusted
  report-plots          ... and renders its plots without running anything
  untrusted-control     the same notebook, edited outside Jupyter, renders no plot (the two checks above can fail)

    .venv/bin/python scripts/check_jupyterlab.py [--study sculpt] [--keep]

It needs `pip install -e '.[notebooks,lab]'`, Playwright for Python (the dev extra) and Debian's chromium; Playwright
drives /usr/bin/chromium (never `playwright install`). As root it re-runs itself in a network namespace of its own
(`unshare -n`, loopback only); the browser also aborts every request that is not for the local server. Everything is
written under a temporary folder (--keep keeps it, with screenshots and the server's log), except the signature that
`lotterylab study` stores in this user's Jupyter data folder, as it does for every report.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
NETNS_FLAG = "LOTTERYLAB_CHECK_NETNS"  # set in the re-run inside the network namespace
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
ERROR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]'
PROGRESS = ".jp-OutputArea-output .widget-hprogress"
# per canvas: pixels not of its most common colour (the plot's background), and how many colours it has
INK = """canvas => {
    const {width, height} = canvas;
    const context = width && height ? canvas.getContext("2d") : null;
    if (!context) return [0, 0];
    const pixels = new Uint32Array(context.getImageData(0, 0, width, height).data.buffer);
    const counts = new Map();
    for (const pixel of pixels) counts.set(pixel, (counts.get(pixel) || 0) + 1);
    return [pixels.length - Math.max(...counts.values()), counts.size];
}"""
MIN_INK = 0.005  # of a figure's area: axes, ticks and markers cover more; a blank or background-only canvas none


class Checks:
    """PASS/FAIL lines, printed as they are decided."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def report(self, name: str, passed: bool, detail: str) -> None:
        print(f"{'PASS' if passed else 'FAIL'} {name}: {detail}", flush=True)
        if not passed:
            self.failed.append(name)


def missing_tools(chromium: str) -> list[str]:
    missing = [name for name in ("jupyterlab", "playwright", "papermill", "ipywidgets")
               if importlib.util.find_spec(name) is None]
    return missing + ([chromium] if not Path(chromium).is_file() else [])


def rerun_without_network() -> None:
    """As root, run this script again in a network namespace of its own with only loopback up, and exit with its
    status; elsewhere (or already inside) return, and the browser's request filter is the only guard."""
    if os.environ.get(NETNS_FLAG) or os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return
    if subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode != 0:
        return
    command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
    sys.exit(subprocess.run(command, env={**os.environ, NETNS_FLAG: "1"}, check=False).returncode)


def smoke_copy(study: str, runs_root: Path, output_dir: Path) -> Any:
    """The study's notebook with an injected-parameters cell for the smoke scale, as papermill writes one."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from lotterylab.studies import catalog

    found = catalog.get(study)
    defaults = catalog.notebook_parameters(found.notebook)
    if "scale" in defaults:
        values: dict[str, Any] = {"scale": "smoke"}
    else:  # a parameters cell of literals: the smoke file's values
        values = catalog.load_params(found.params_file("smoke"), defaults, [found.root / "params"])
    values.update({name: str(path) for name, path in (("runs_root", runs_root), ("output_dir", output_dir))
                   if name in defaults})
    return parameterize_notebook(load_notebook_node(str(found.notebook)), values)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Lab:
    """A JupyterLab server on 127.0.0.1 serving `root`, with settings of its own (no news, no extension manager)."""

    def __init__(self, root: Path, work: Path):
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        settings = work / "settings"
        for plugin, values in {"@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                                              "checkForUpdates": False},
                               "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False}}.items():
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        self.log = (work / "jupyterlab.log").open("w")
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
                   f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True",
                   f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={work / 'workspaces'}"]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(work / "runtime")})
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; see {self.log.name}") from None
                time.sleep(0.5)

    def url(self, path: str) -> str:
        return f"{self.base}/lab/tree/{path}?reset&token={self.token}"

    def contents(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/api/contents/{path}?content=1&token={self.token}") as reply:
            return json.load(reply)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class Browser:
    """Headless Chromium through Playwright; every request not for the local server is aborted and counted."""

    def __init__(self, playwright: Any, chromium: str, lab: Lab, shots: Path):
        self.browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        self.context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        self.blocked: list[str] = []
        self.context.route("**/*", self._route)
        self.lab, self.shots = lab, shots

    def _route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith((self.lab.base, "data:", "blob:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def open(self, path: str, timeout: float) -> Any:
        """A page with the notebook at `path` open and its kernel idle."""
        page = self.context.new_page()
        page.goto(self.lab.url(path))
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=timeout * 1000)
        wait_idle(page, timeout)
        return page

    def shot(self, page: Any, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=False)

    def close(self) -> None:
        self.browser.close()


def kernel_status(page: Any) -> str:
    """The status bar's kernel state, e.g. "Idle", "Busy", "Connecting"; "" before a kernel is attached."""
    for text in page.locator(".jp-StatusBar-TextItem").all_inner_texts():
        name, _, state = text.partition(" | ")
        if state and name != "No Kernel":
            return state.strip()
    return ""


def wait_idle(page: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while kernel_status(page) != "Idle":
        if time.monotonic() > deadline:
            raise TimeoutError(f"kernel not idle after {timeout:.0f} s (status {kernel_status(page)!r})")
        page.wait_for_timeout(250)


def run_all(page: Any, timeout: float, on_poll: Any) -> None:
    """Run > Run All Cells, then wait until no cell is queued or running and the kernel is idle."""
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    deadline = time.monotonic() + timeout
    page.wait_for_timeout(1000)
    while True:
        on_poll(page)
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
        if kernel_status(page) == "Idle" and prompts and all("*" not in text and text.strip() != "[ ]:"
                                                             for text in prompts):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"cells still running after {timeout:.0f} s: {prompts}")
        page.wait_for_timeout(500)


def figures_drawn(page: Any) -> tuple[bool, str]:
    """Every bokeh figure in the outputs, scrolled into view (JupyterLab renders cells lazily), has a canvas with ink:
    more than MIN_INK of its pixels off the background colour, in more than two colours."""
    figures = page.locator(".jp-OutputArea-output .bk-Figure").all()
    drawn = 0
    for figure in figures:
        figure.scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        layers = [(canvas.evaluate(INK), canvas.evaluate("c => c.width * c.height"))
                  for canvas in figure.locator(".bk-Canvas canvas").all()]
        drawn += any(inked > MIN_INK * area and colours > 2 for (inked, colours), area in layers)
    return bool(figures) and drawn == len(figures), f"{len(figures)} bokeh figures, {drawn} drawn"


def output_texts(page: Any, selector: str) -> list[str]:
    return [text.strip()[:160].replace("\n", " | ") for text in page.locator(selector).all_inner_texts()]


def check_committed(browser: Browser, checks: Checks, path: str, timeout: float, work: Path) -> None:
    """Open the committed notebook as is, let its kernel start, and look for JupyterLab's modified mark; then save it
    and show what JupyterLab wrote in its metadata."""
    page = browser.open(path, timeout)
    page.wait_for_timeout(3000)  # the kernel's spec and language_info are copied in once it is idle
    dirty = page.locator(".lm-TabBar-tab.jp-mod-dirty").count() > 0
    browser.shot(page, "committed")
    page.keyboard.press("Control+s")
    page.wait_for_timeout(1500)
    saved = json.loads((work / "lab" / path).read_text())["metadata"]
    written = {key: saved.get(key) for key in ("kernelspec", "language_info")}
    checks.report("committed-unmodified", not dirty, ("not marked modified" if not dirty else "marked modified")
                  + f"; JupyterLab saves {json.dumps(written, sort_keys=True)}")
    page.close()


def check_smoke(browser: Browser, checks: Checks, path: str, timeout: float) -> None:
    page = browser.open(path, timeout)
    seen: dict[str, str] = {}

    def watch(page: Any) -> None:  # the bar as it is while training, the first time it shows a run's epoch
        texts = page.locator(".jp-OutputArea-output .widget-hbox").all_inner_texts()
        if "training" not in seen and any("epoch" in text for text in texts):
            seen["training"] = next(text for text in texts if "epoch" in text).replace("\n", " ")
            browser.shot(page, "smoke-training")

    run_all(page, timeout, watch)
    if page.locator(PROGRESS).count():
        page.locator(PROGRESS).first.scroll_into_view_if_needed()
        browser.shot(page, "smoke-progress")
    stderr, errors = output_texts(page, STDERR), output_texts(page, ERROR)
    checks.report("no-stderr", not stderr and not errors,
                  f"{len(stderr)} stderr boxes, {len(errors)} errors" + (f": {(stderr + errors)[0]}" if stderr or errors
                                                                          else ""))
    bars = page.locator(PROGRESS).count()
    final = " ".join(page.locator(".jp-OutputArea-output .widget-hbox").all_inner_texts()).replace("\n", " ")
    training = seen.get("training", "not seen")
    checks.report("progress", bars > 0 and "runs" in final,
                  f"{bars} progress bars; at the end: {final or 'none'}; while training: {training}")
    checks.report("plots", *figures_drawn(page))
    browser.shot(page, "smoke-figure")
    page.close()


def check_report(browser: Browser, checks: Checks, lab: Lab, path: str, control: str, timeout: float) -> None:
    cells = [cell for cell in lab.contents(path)["content"]["cells"] if cell["cell_type"] == "code"]
    trusted = sum(bool(cell["metadata"].get("trusted")) for cell in cells)
    checks.report("report-trusted", bool(cells) and trusted == len(cells),
                  f"{trusted} of {len(cells)} code cells trusted by the server ({path})")
    page = browser.open(path, timeout)
    checks.report("report-plots", *figures_drawn(page))
    browser.shot(page, "report-figure")
    page.close()
    page = browser.open(control, timeout)
    drawn = page.locator(".jp-OutputArea-output .bk-Figure").count()
    checks.report("untrusted-control", drawn == 0, f"{drawn} bokeh figures (an untrusted copy must show none)")
    page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="sculpt")
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--timeout", type=float, default=600, help="seconds for one notebook to run (default 600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (screenshots, logs)")
    args = parser.parse_args()
    missing = missing_tools(args.chromium)
    if missing:
        print(f"SKIP: missing {', '.join(missing)} (pip install -e '.[notebooks,lab,dev]'; apt-get install chromium)")
        return 2
    rerun_without_network()
    isolated = bool(os.environ.get(NETNS_FLAG))
    import nbformat
    from playwright.sync_api import sync_playwright

    from lotterylab.studies import catalog

    work = Path(tempfile.mkdtemp(prefix="lotterylab-lab-"))
    lab_root, shots = work / "lab", work / "screenshots"
    shots.mkdir(parents=True)
    (lab_root / "notebooks").mkdir(parents=True)
    checks = Checks()
    print(f"network: {'own namespace, loopback only' if isolated else 'requests outside 127.0.0.1 aborted'}; "
          f"work: {work}", flush=True)
    committed = f"notebooks/{args.study}.ipynb"
    shutil.copyfile(catalog.get(args.study).notebook, lab_root / committed)
    smoke = f"notebooks/{args.study}_smoke.ipynb"
    nbformat.write(smoke_copy(args.study, work / "runs-lab", work / "out-lab"), lab_root / smoke)
    study = subprocess.run([sys.executable, "-m", "lotterylab.cli", "study", args.study, "--scale", "smoke",
                            "--reports", str(lab_root / "reports"), "--runs", str(work / "runs-study")],
                           capture_output=True, text=True, check=False)
    if study.returncode != 0:
        print(f"FAIL lotterylab study: {study.stderr.strip() or study.stdout.strip()}")
        return 1
    executed = f"reports/{args.study}/smoke/nb/{args.study}.ipynb"
    control = f"reports/{args.study}/smoke/nb/{args.study}_edited.ipynb"
    edited = json.loads((lab_root / executed).read_text())
    edited["metadata"]["edited_outside_jupyter"] = True
    (lab_root / control).write_text(json.dumps(edited, indent=1))
    lab = Lab(lab_root, work)
    try:
        with sync_playwright() as playwright:
            browser = Browser(playwright, args.chromium, lab, shots)
            try:
                check_committed(browser, checks, committed, args.timeout, work)
                check_smoke(browser, checks, smoke, args.timeout)
                check_report(browser, checks, lab, executed, control, args.timeout)
            finally:
                browser.close()
        print(f"requests outside the server aborted: {len(browser.blocked)}"
              + (f", e.g. {browser.blocked[0]}" if browser.blocked else ""))
    finally:
        lab.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'FAIL' if checks.failed else 'PASS'}: {len(checks.failed)} of 7 checks failed"
          + (f" ({', '.join(checks.failed)})" if checks.failed else ""))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
