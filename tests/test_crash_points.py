"""Crash-point testing, in the manner of SQLite's and ALICE's crash-consistency tests.

A small LRR run (3 levels) and a small SCULPT run (2 targets) are each run once uninterrupted, counting every durable
write (tests/crash_worker.py). Then, for each write point k, one run is SIGKILLed right before write k and one has
write k fail with ENOSPC. Each is resumed with the same command and must end bitwise equal to the uninterrupted run;
it counts as complete only at the end; the ENOSPC run printed one line naming the file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from crash_worker import Faults
from test_runs import tiny

from lotterylab import cli
from lotterylab.core import paths
from lotterylab.training import results

pytestmark = pytest.mark.filterwarnings("ignore:.*(stale lock|rebuilt|retraining|rewritten):UserWarning")

WORKER = Path(__file__).with_name("crash_worker.py")
EPOCHS = 2
SMALL = {"data": {"batch_size": 64, "train_size": 256, "test_size": 128}, "model": {"width": 16},
         "schedule": {"epochs": EPOCHS, "warmup_epochs": 0.5}}  # on test_runs.tiny's MNIST-1D MLP
CASES = {  # 3 stages each: LRR's dense level and two pruned levels; SCULPT's one cycle and its two targets
    "lrr": {"method": {"name": "lrr", "cycles": 1, "prune_fraction": 0.2}, "mask": {"sparsity": 0.36}},
    "sculpt": {"method": {"name": "sculpt", "cycles": 1, "targets": [0.8, 0.9], "prune_criterion": "magnitude"},
               "mask": {"sparsity": 0.5, "criterion": "random"}},
}


@dataclass
class Case:
    config_file: Path
    run_hash: str
    reference: Path  # the uninterrupted run's directory
    writes: list[Path]  # every durable write it made, in order, relative to its run directory


def _run(case: Case, out: Path) -> int:
    return cli.main(["run", str(case.config_file), "--out", str(out)])


def _files(run: Path) -> dict[str, bytes]:
    return {str(path.relative_to(run)): path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}


def _assert_same_as_reference(case: Case, run: Path, what: str) -> None:
    expected, found = _files(case.reference), _files(run)
    assert sorted(found) == sorted(expected), f"{what}: files differ: {sorted(set(found) ^ set(expected))}"
    differing = [name for name in expected if found[name] != expected[name]]
    assert not differing, f"{what}: not bitwise equal to the uninterrupted run: {differing}"


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory) -> Case:
    root = tmp_path_factory.mktemp(f"crash-{request.param}")
    cfg = tiny(**SMALL, **CASES[request.param])
    config_file = root / "config.yaml"
    config_file.write_text(cfg.to_yaml())
    with Faults() as counted:
        assert cli.main(["run", str(config_file), "--out", str(root / "reference")]) == 0
    reference = paths.run_dir(root / "reference", cfg.run_hash())
    assert results.is_complete(reference)
    return Case(config_file, cfg.run_hash(), reference, [path.relative_to(reference) for path in counted.written])


def test_every_kind_of_durable_write_is_a_write_point(case):
    names = [path.name for path in case.writes]
    stages = results.stage_count(case.reference)
    assert stages == 3
    assert names[:3] == ["lock", "config.yaml", "init.pt"] and names[-2:] == ["results.nc", "done.json"]
    assert [name for name in names if name.endswith("-end.pt")] == [f"stage{s:03d}-end.pt" for s in range(stages)]
    assert sum("-epoch" in name for name in names) == stages * EPOCHS
    assert len(names) == len(set(names))  # each write point is one file written once


def test_sigkill_before_each_write_then_resume_is_bitwise(case, tmp_path):
    threads = str(torch.get_num_threads())
    for index, written in enumerate(case.writes):
        out = tmp_path / f"kill-{index}"
        killed = subprocess.run([sys.executable, str(WORKER), str(index), str(case.config_file), str(out), threads],
                                capture_output=True, text=True, env=os.environ.copy())
        assert killed.returncode == -9, f"write {index} ({written}): not killed there\n{killed.stderr[-2000:]}"
        run = paths.run_dir(out, case.run_hash)
        assert not results.is_complete(run), f"killed before writing {written}, yet complete"
        assert _run(case, out) == 0  # taking over the dead process's lock, with a warning
        assert results.is_complete(run)
        _assert_same_as_reference(case, run, f"killed before write {index} ({written})")


def test_disk_full_at_each_write_says_one_line_then_resume_is_bitwise(case, tmp_path, capsys):
    for index, written in enumerate(case.writes):
        out = tmp_path / f"enospc-{index}"
        run = paths.run_dir(out, case.run_hash)
        capsys.readouterr()
        with Faults("enospc", index):
            code = _run(case, out)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2, f"write {index} ({written}) failed with ENOSPC, yet exit code {code}"
        assert len(lines) == 1 and str(run / written) in lines[0] and "disk full" in lines[0], \
            f"write {index} ({written}): {lines}"
        assert not results.is_complete(run), f"disk full writing {written}, yet complete"
        assert not (run / written).exists(), f"{written}: a failed write left the file behind"
        assert _run(case, out) == 0
        assert results.is_complete(run)
        _assert_same_as_reference(case, run, f"disk full at write {index} ({written})")


def test_complete_only_when_every_artifact_exists_and_verifies_and_a_lost_one_is_rebuilt(case, tmp_path):
    for name in ["results.nc", "config.yaml", "init.pt", *(f"checkpoints/stage{s:03d}-end.pt" for s in range(3))]:
        for damage in ("delete", "flip a byte"):
            run = tmp_path / damage.replace(" ", "-") / name.replace("/", "-") / case.run_hash
            shutil.copytree(case.reference, run)
            target = run / name
            if damage == "delete":
                target.unlink()
            else:
                data = bytearray(target.read_bytes())
                data[len(data) // 2] ^= 0xFF
                target.write_bytes(bytes(data))
            assert not results.is_complete(run), f"{damage} {name}: still counted complete"
            assert _run(case, run.parent) == 0  # warning of what it rebuilds
            assert results.is_complete(run), f"{damage} {name}: not repaired"
            _assert_same_as_reference(case, run, f"{damage} {name}, then resumed")
