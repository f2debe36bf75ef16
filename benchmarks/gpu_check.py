"""The GPU check: install .device/ with no index, run five steps under time budgets, write $OUT/gpu_check.json.

Run it through benchmarks/gpu_check.sh (which picks the interpreter). Steps, each under `timeout` so that one that
fails or hangs never stops the others:

1. `tests`: `pytest -m gpu` over the test files that have such tests (packed vs solo, bf16, channels_last, compile,
   bitwise resume on $LOTTERYLAB_TEST_DEVICE), then tests/test_imagenet.py's CUDA decode test.
2. `single_run`: benchmarks/bench_single_run.py (ResNet20 s/epoch: standard recipe vs lotterylab's options).
3. `packing`: benchmarks/bench_packing.py at K = 1, 2, 4, 8.
4. `imagenet`: benchmarks/bench_imagenet.py (synthetic vs device decode vs PIL).
5. `study`: `lotterylab study sculpt --params params/sculpt/gpu_check.yaml` end to end to its report.

Every step records its status, exit codes, wall time, results (the benchmarks' JSON lines, test counts, the report)
and the peak memory of its processes (benchmarks/peak_memory: torch.cuda.max_memory_allocated and RSS, the largest
over the step's processes; the benchmarks' lines also carry each measurement's own).
gpu_check.json is rewritten after each step, so a check cut short keeps what it measured. `--dry-run`: the same steps
at toy size on CPU (a few minutes on 2 cores; tests/test_gpu_check.py runs it).

    benchmarks/gpu_check.sh [--dry-run]        # OUT=./gpu_check_out by default
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / ".device"
FASHION_MNIST = (BUNDLE / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))
BUNDLED_IMPORTS = "pydantic, h5netcdf, tqdm, papermill, nbclient, nbconvert, ipykernel, holoviews, bokeh"
CUDA_DECODE_TEST = "tests/test_imagenet.py::test_cuda_decode_matches_cpu_decode"


@dataclass
class Step:
    name: str
    commands: list[list[str]]
    budget_s: float
    results: Callable[[str, Path], object]  # (log text, work dir) -> what the step measured


def json_lines(log: str, _work: Path) -> list[dict]:
    """Every whole line of `log` that is a JSON object: a benchmark's measurements, the peak-memory hook's processes."""
    lines = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def pytest_counts(_log: str, work: Path) -> dict[str, int]:
    """Totals over the step's JUnit XML files (one per pytest command)."""
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for report in sorted(work.glob("junit-*.xml")):
        for suite in ElementTree.parse(report).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def study_html(work: Path) -> Path:
    """Where `lotterylab study` renders the report: reports/<study>/<params file's stem>/report.html."""
    return work / "reports" / "sculpt" / next(work.glob("gpu_check*.yaml")).stem / "report.html"


def study_report(_log: str, work: Path) -> dict:
    """The report (copied to $OUT/study_report.html at the end) and the runs that finished."""
    html = study_html(work)
    return {"report": "study_report.html" if html.is_file() else None,
            "report_bytes": html.stat().st_size if html.is_file() else None,
            "runs_complete": len(list((work / "runs").glob("*/done.json")))}


def study_params(work: Path, dry_run: bool) -> Path:
    """params/sculpt/gpu_check[_dry].yaml with base.data.root set to the Fashion-MNIST found (bundle first)."""
    import yaml

    source = ROOT / "params" / "sculpt" / ("gpu_check_dry.yaml" if dry_run else "gpu_check.yaml")
    params = yaml.safe_load(source.read_text())
    root = next((folder for folder in FASHION_MNIST if folder.is_dir()), FASHION_MNIST[-1])
    params["base"]["data"]["root"] = str(root)
    target = work / source.name
    target.write_text(yaml.safe_dump(params, sort_keys=False))
    return target


def steps(python: str, work: Path, dry_run: bool) -> list[Step]:
    device = ["--device", "cpu"] if dry_run else ["--device", "cuda"]
    gpu_tests = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_*.py")
                       if "pytest.mark.gpu" in path.read_text())
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    params = study_params(work, dry_run)
    if dry_run:
        single = ["--model", "mlp", "--train-size", "64", "--epochs", "1", "--workers", "0"]
        packed = ["--train-size", "64", "--ks", "1,2", "--epochs", "1"]
        imagenet = ["--images", "10", "--batch-size", "5", "--image-size", "64", "--workers", "0"]
    else:
        # Sized for about 8 minutes in all on one H100/H200 (CIFAR-shaped sets of 50,000 and 25,000 images).
        single = ["--epochs", "2"]
        packed = ["--ks", "1,2,4,8", "--epochs", "1", "--train-size", "25000"]
        imagenet = ["--images", "2048", "--bf16"]
    # Caps, not expectations: the dry run's are generous so that only a hang trips them on a slow CI machine.
    budgets = dict.fromkeys(("tests", "single_run", "packing", "imagenet", "study"), 300) if dry_run else \
        {"tests": 90, "single_run": 120, "packing": 90, "imagenet": 70, "study": 110}
    return [
        Step("tests", [[*pytest, "-m", "gpu", *gpu_tests, f"--junitxml={work}/junit-gpu.xml"],
                       [*pytest, CUDA_DECODE_TEST, f"--junitxml={work}/junit-decode.xml"]],
             budgets["tests"], pytest_counts),
        Step("single_run", [[python, "benchmarks/bench_single_run.py", *device, *single]], budgets["single_run"],
             json_lines),
        Step("packing", [[python, "benchmarks/bench_packing.py", "--model", "resnet20", *device, *packed]],
             budgets["packing"], json_lines),
        Step("imagenet", [[python, "benchmarks/bench_imagenet.py", *device, *imagenet]], budgets["imagenet"],
             json_lines),
        Step("study", [[python, "-m", "lotterylab.cli", "study", "sculpt", "--params", str(params),
                        "--reports", str(work / "reports"), "--runs", str(work / "runs")]], budgets["study"],
             study_report),
    ]


def install(python: str, site: Path) -> dict:
    """pip install the bundle's pinned wheels into `site` (--target: the interpreter's own packages stay untouched)."""
    start = time.perf_counter()
    if not (BUNDLE / "wheels").is_dir():
        return {"status": "failed", "error": f"{BUNDLE / 'wheels'} missing: run `make device-bundle` first"}
    done = subprocess.run([python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--upgrade",
                           "--quiet", "--target", str(site), "--find-links", str(BUNDLE / "wheels"),
                           "--requirement", str(BUNDLE / "requirements.txt")], capture_output=True, text=True)
    return {"status": "ok" if done.returncode == 0 else "failed", "exit_code": done.returncode,
            "wall_s": round(time.perf_counter() - start, 1), "site": str(site),
            "output_tail": (done.stdout + done.stderr)[-2000:]}


def has_bundled_packages(python: str) -> bool:
    return subprocess.run([python, "-c", f"import {BUNDLED_IMPORTS}"], capture_output=True).returncode == 0


def environment(work: Path, site: Path | None, dry_run: bool) -> dict[str, str]:
    """The steps' environment: the peak-memory hook, the installed bundle and the repository on PYTHONPATH."""
    path = [str(ROOT / "benchmarks" / "peak_memory"), *([str(site)] if site else []), str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PYTHONUNBUFFERED": "1", "LOTTERYLAB_DATA": str(work / "data"),
           "LOTTERYLAB_TEST_DEVICE": "cpu" if dry_run else "cuda"}
    if site:  # nbconvert's templates and the kernel spec are data files of the wheels
        env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(site / "share" / "jupyter"),
                                                            os.environ.get("JUPYTER_PATH")]))
    # MNIST-1D from the bundle: generating it needs scipy and matplotlib, which are not bundled.
    if (BUNDLE / "data" / "mnist1d").is_dir():
        shutil.copytree(BUNDLE / "data" / "mnist1d", work / "data" / "mnist1d", dirs_exist_ok=True)
    return env


def probe(python: str, env: dict[str, str]) -> dict:
    """torch's version and the device, asked in a child process so this one never holds a CUDA context."""
    code = ("import json, torch; cuda = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
            "'cuda': cuda, 'device': torch.cuda.get_device_name() if cuda else 'cpu', "
            "'cuda_version': torch.version.cuda}))")
    done = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-500:]}


def run_step(step: Step, env: dict[str, str], out: Path, work: Path, budget_s: float) -> dict:
    """All of the step's commands under one budget, each under `timeout` (which also ends its children)."""
    log, peaks = out / f"{step.name}.log", work / f"peak-{step.name}.jsonl"
    env = {**env, "LOTTERYLAB_PEAK_MEMORY_FILE": str(peaks)}
    start, codes = time.perf_counter(), []
    with open(log, "w") as file:
        for command in step.commands:
            left = budget_s - (time.perf_counter() - start)
            file.write(f"$ {' '.join(command)}\n")
            file.flush()
            if left < 1:
                codes.append(124)
                break
            done = subprocess.run(["timeout", "--kill-after=10", f"{left:.0f}", *command], cwd=ROOT, env=env,
                                  stdout=file, stderr=subprocess.STDOUT)
            codes.append(done.returncode)
    wall = time.perf_counter() - start
    processes = json_lines(peaks.read_text(), work) if peaks.is_file() else []  # a killed process may cut its line
    gpu = [p["peak_gpu_mem_mib"] for p in processes if p["peak_gpu_mem_mib"] is not None]
    try:
        results = step.results(log.read_text(errors="replace"), work)
    except (OSError, ValueError, ElementTree.ParseError) as error:  # a step cut short may leave a partial file
        results = {"error": f"{type(error).__name__}: {error}"}
    status = "timeout" if any(code in (124, 137) for code in codes) else "ok" if not any(codes) else "failed"
    if status == "ok" and not results:
        status = "failed"  # exit 0 without a single measurement is not a result
    return {"name": step.name, "status": status, "exit_codes": codes, "wall_s": round(wall, 1),
            "budget_s": round(budget_s), "log": log.name, "results": results,
            "peak_gpu_mem_mib": max(gpu) if gpu else None,
            "peak_rss_mib": max((p["peak_rss_mib"] for p in processes), default=None),
            "processes": len(processes)}


def git_revision() -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every step at toy size on CPU")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "gpu_check_out"))
    parser.add_argument("--budget-s", type=float, help="for all steps together; default 480 s (8 minutes)")
    args = parser.parse_args()
    python, out = sys.executable, args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lotterylab-gpu-check-"))
    started = time.perf_counter()
    deadline = started + (args.budget_s or (1200 if args.dry_run else 480))
    report = {"check": "lotterylab gpu_check", "dry_run": args.dry_run,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_revision": git_revision(),
              "python": platform.python_version(), "host_cpus": os.cpu_count()}
    site = None
    if args.dry_run and has_bundled_packages(python):
        report["install"] = {"status": "skipped", "reason": "this interpreter already has the bundled packages"}
    else:
        site = Path(tempfile.gettempdir()) / f"lotterylab-device-site-{platform.python_version()}"
        report["install"] = install(python, site)
    env = environment(work, site, args.dry_run)
    report["device"] = probe(python, env)
    report["steps"] = []
    path = out / "gpu_check.json"
    if not args.dry_run and not report["device"].get("cuda"):
        report["error"] = "no CUDA device: run with --dry-run for the CPU rehearsal"
    else:
        for step in steps(python, work, args.dry_run):
            left = deadline - time.perf_counter()
            report["steps"].append(run_step(step, env, out, work, min(step.budget_s, left)))
            path.write_text(json.dumps(report, indent=1) + "\n")
            print(f"gpu_check: {step.name}: {report['steps'][-1]['status']} in {report['steps'][-1]['wall_s']} s",
                  flush=True)
        if study_html(work).is_file():
            shutil.copyfile(study_html(work), out / "study_report.html")
    report["wall_s"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(report, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"gpu_check: wrote {path}")
    failed = [s["name"] for s in report["steps"] if s["status"] != "ok"]
    sys.exit(1 if failed or "error" in report or report["install"]["status"] == "failed" else 0)


if __name__ == "__main__":
    main()
