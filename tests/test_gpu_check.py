"""benchmarks/gpu_check.sh --dry-run end to end: every step of the GPU check runs on CPU and reports its numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["tests", "single_run", "packing", "imagenet", "study"]
FASHION_MNIST = (ROOT / ".device" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@pytest.mark.slow
def test_dry_run_reports_every_step(tmp_path):
    if not any(folder.is_dir() for folder in FASHION_MNIST):
        pytest.skip("no Fashion-MNIST for the study step (Debian package dataset-fashion-mnist; .ci/run installs it)")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    # A guard against a hang, not a speed requirement: the script's own step budgets end a stuck step first.
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env, capture_output=True,
                          text=True, timeout=3600)
    assert (tmp_path / "gpu_check.json").is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == STEPS
    for name, step in steps.items():
        log = tmp_path / step["log"]
        assert step["status"] == "ok", f"{name}: {step['status']} {step['exit_codes']}\n{log.read_text()[-3000:]}"
        assert step["exit_codes"] and not any(step["exit_codes"])
        assert positive(step["wall_s"]) and positive(step["budget_s"]) and log.is_file()
        # Every step's processes report at exit (benchmarks/peak_memory); on CPU no process holds CUDA memory.
        assert step["processes"] >= 1 and positive(step["peak_rss_mib"])
        assert step["peak_gpu_mem_mib"] is None
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["dry_run"] is True and report["device"]["device"] == "cpu" and positive(report["wall_s"])
    assert report["install"]["status"] in ("ok", "skipped")

    tests = steps["tests"]["results"]
    assert tests["passed"] >= 1 and tests["failures"] == tests["errors"] == 0

    single = {line["side"]: line for line in steps["single_run"]["results"]}
    assert set(single) == {"baseline", "lotterylab fp32", "lotterylab bf16+channels_last",
                           "lotterylab bf16+channels_last+compile"}
    assert all(positive(line["s_per_epoch"]) and positive(line["speedup_vs_baseline"]) for line in single.values())

    packed = {(line["mode"], line["k"]): line for line in steps["packing"]["results"]}
    assert {("solo", 1), ("vmap", 1), ("sequential", 2), ("vmap", 2)} <= set(packed)
    assert all(positive(line["examples_per_s"]) and positive(line["ratio_to_solo"]) for line in packed.values())

    imagenet = {line["side"]: line for line in steps["imagenet"]["results"]}
    assert {"synthetic", "folder device-decode", "loader only device-decode"} <= set(imagenet)
    assert all(positive(line["images_per_s"]) for line in imagenet.values())

    for line in [*single.values(), *packed.values(), *imagenet.values()]:
        assert "peak_gpu_mem_mib" in line and line["device"].startswith("cpu")

    study = steps["study"]["results"]
    assert positive(study["runs_complete"]) and positive(study["report_bytes"])
    assert (tmp_path / study["report"]).stat().st_size == study["report_bytes"]
