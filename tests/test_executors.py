"""Executors and sweeps without a cluster: the registry's errors, `lotterylab sweep` with the local executor, status
and wait for collecting, nothing resubmitted when finished, and two overlapping sweeps training each run once."""

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from test_locks import TINY

from lotterylab import cli
from lotterylab.core.config import ConfigError
from lotterylab.studies import grids
from lotterylab.training import executors, results

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("section, message", [
    ({"name": "ray"}, "executor: name: unknown executor 'ray'; valid: local, slurm"),
    ({"partition": "gpu"}, "executor: name: missing; valid: local, slurm"),
    ({"name": "slurm", "partiton": "gpu"}, "executor: partiton: unknown key"),
    ({"name": "slurm", "time_min": "1h"}, "executor: time_min: Input should be a valid integer"),
    ({"name": "slurm", "gpus_per_node": -1}, "executor: gpus_per_node: Input should be greater than or equal to 0"),
    ({"name": "local", "partition": "gpu"}, "executor: partition: unknown key"),
    ("slurm", "executor: expected a mapping with a name, got str"),
])
def test_bad_executor_section_is_one_line_naming_the_field(section, message):
    with pytest.raises(ConfigError) as error:
        executors.from_params(section)
    assert str(error.value) == message


def test_executor_sections_build_the_named_executor():
    assert executors.from_params(None) is executors.local and executors.from_params({}) is executors.local
    local = executors.resolve({"name": "local"})
    assert getattr(local, "func", local) is executors.local  # a partial where the section sets local's options
    slurm = executors.from_params({"name": "slurm", "partition": "gpu", "gpus_per_node": 1, "time_min": 600,
                                   "extra": {"account": "lab", "qos": "high"}})
    assert isinstance(slurm, executors.SlurmExecutor)
    assert (slurm.params.partition, slurm.params.gpus_per_node) == ("gpu", 1)
    assert slurm.params.extra == {"account": "lab", "qos": "high"}
    assert executors.resolve(slurm) is slurm


def _sweep_file(path: Path, seeds: list[int], executor: dict | None = None) -> Path:
    sweep = {"base": TINY, "axes": {"seed": seeds, "mask.sparsity": {"dense": {}, "half": {
        "method.name": "pai", "mask.sparsity": 0.5, "mask.criterion": "random"}}}}
    path.write_text(yaml.safe_dump({**sweep, **({"executor": executor} if executor else {})}, sort_keys=False))
    return path


def test_sweep_cli_trains_every_point_then_reuses_them(tmp_path, capsys):
    params = _sweep_file(tmp_path / "sweep.yaml", [0, 1], {"name": "local"})
    assert cli.main(["sweep", str(params), "--runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("4 runs: 4 trained, 0 reused")
    run_dirs = [Path(line) for line in out[1:]]
    assert len(set(run_dirs)) == 4 and all(results.is_complete(run_dir) for run_dir in run_dirs)
    assert results.read(run_dirs[1]).attrs["seed"] == 0 and results.read(run_dirs[2]).attrs["seed"] == 1
    assert cli.main(["sweep", str(params), "--runs", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("4 runs: 0 trained, 4 reused")


@pytest.mark.parametrize("text, message", [
    ("base: {}\naxes: {seed: [0]}\nexecuter: {}\n", "executer: unknown section; valid: base, axes, executor"),
    ("axes: {seed: [0]}\n", "base: missing or not a mapping"),
    ("base: {}\naxes: {seed: 3}\n", "axes.seed: expected a non-empty list of values"),
    ("base: {model: {widht: 3}}\naxes: {seed: [0]}\n", "[seed=0]: model.widht: unknown key"),
    ("base: {}\naxes: {seed: [0]}\nexecutor: {name: slurm, partiton: gpu}\n", "executor: partiton: unknown key"),
])
def test_bad_sweep_file_exits_2_with_one_line_naming_the_field(tmp_path, capsys, text, message):
    params = tmp_path / "sweep.yaml"
    params.write_text(text)
    assert cli.main(["sweep", str(params), "--runs", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and message in error and str(params) in error
    assert not (tmp_path / "runs").exists()


def test_executor_option_overrides_the_file(tmp_path, capsys):
    params = _sweep_file(tmp_path / "sweep.yaml", [0], {"name": "slurm", "partition": "nowhere"})
    assert cli.main(["sweep", str(params), "--runs", str(tmp_path / "runs"), "--executor", "local"]) == 0
    assert capsys.readouterr().out.startswith("2 runs: 2 trained")
    assert cli.main(["sweep", str(params), "--executor", "ray"]) == 2
    assert "name: unknown executor 'ray'; valid: local, slurm" in capsys.readouterr().err


def test_executor_file_is_validated_and_shipped_example_builds(tmp_path):
    shipped = executors.from_params(executors.section(str(ROOT / "params/executors/slurm.yaml")))
    assert isinstance(shipped, executors.SlurmExecutor) and shipped.params.gpus_per_node == 1
    bad = tmp_path / "cluster.yaml"
    bad.write_text("name: slurm\ntime_min: 1h\n")
    with pytest.raises(ConfigError, match=f"^{bad}: time_min: Input should be a valid integer"):
        executors.section(str(bad))
    with pytest.raises(ConfigError, match="absent.yaml: no such executor file"):
        executors.section(str(tmp_path / "absent.yaml"))


def test_study_executor_option_fails_before_the_notebook_runs(tmp_path, capsys):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("name: slurm\npartiton: gpu\n")
    assert cli.main(["study", "sculpt", "--scale", "smoke", "--reports", str(tmp_path / "reports"),
                     "--runs", str(tmp_path / "runs"), "--executor", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"lotterylab: error: {bad}: partiton: unknown key"
    params = tmp_path / "smoke-ray.yaml"
    params.write_text((ROOT / "params/sculpt/smoke.yaml").read_text() + "executor: {name: ray}\n")
    assert cli.main(["study", "sculpt", "--params", str(params), "--reports", str(tmp_path / "reports"),
                     "--runs", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == (f"lotterylab: error: {params}: executor: name: unknown executor 'ray'; "
                                               f"valid: local, slurm")
    assert not (tmp_path / "runs").exists()


def test_status_and_wait_follow_runs_finishing_elsewhere(tmp_path, capsys):
    points = grids.grid(TINY, {"seed": grids.values("seed", [0, 1, 2])})
    assert str(grids.status(points, tmp_path)) == "0 of 3 runs finished, 3 pending"
    assert grids.wait(points, tmp_path, poll=0.05, timeout=0).pending == points
    grids.run_all(points[:1], tmp_path, {"name": "local"})  # a study's executor parameter, as a params file gives it
    now = grids.status(points, tmp_path)
    assert now.finished == points[:1] and now.pending == points[1:]
    assert grids.collect(now.finished, tmp_path).sizes["seed"] == 1  # what is done can be read while the rest runs
    elsewhere = threading.Thread(target=grids.run_all, args=(points[1:], tmp_path))
    elsewhere.start()
    done = grids.wait(points, tmp_path, poll=0.05, timeout=120)
    elsewhere.join()
    assert done.pending == [] and done.finished == points
    shown = capsys.readouterr().out
    assert "1 of 3 runs finished, 2 pending" in shown and "3 of 3 runs finished, 0 pending" in shown


def test_slurm_executor_submits_nothing_for_finished_runs(tmp_path, caplog):
    """A rerun of a finished sweep costs nothing on a cluster either: no job is submitted (no sbatch is needed)."""
    caplog.set_level(logging.INFO, logger="lotterylab")
    points = grids.grid(TINY, {"seed": grids.values("seed", [0, 1])})
    local_dirs = grids.run_all(points, tmp_path)
    slurm = executors.from_params({"name": "slurm", "folder": str(tmp_path / "logs")})
    assert grids.run_all(points, tmp_path, slurm) == [run_dir.resolve() for run_dir in local_dirs]
    assert slurm.jobs == {} and not (tmp_path / "logs").exists()
    assert "2 runs: 0 trained, 2 reused" in caplog.text


COUNTED_SWEEP = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from lotterylab import cli
    from lotterylab.core import paths
    from lotterylab.core import files

    log, go, params, runs_root = sys.argv[1:]
    write = files.atomic_write

    def counted(path, data):
        # every per-epoch checkpoint written, with the run and the process that wrote it
        if paths.checkpoint_position(Path(path)) is not None:
            with open(log, "a") as handle:
                handle.write(f"{Path(path).parent.parent.name} {os.getpid()}\\n")
        write(path, data)

    files.atomic_write = counted
    while not os.path.exists(go):
        time.sleep(0.01)
    sys.exit(cli.main(["sweep", params, "--runs", runs_root]))
""")


@pytest.mark.slow
def test_two_sweeps_overlapping_train_each_run_once(tmp_path):
    """Two `lotterylab sweep` processes (local executors) start together on sweeps sharing two runs, in the same
    order so that they contend for them; every run's epochs are checkpointed by one process, once each."""
    base = {**TINY, "data": {**TINY["data"], "train_size": 1000}, "schedule": {"epochs": 3, "warmup_epochs": 0.5}}
    sweeps = []
    for name, seeds in (("a", [1, 2, 0]), ("b", [1, 2, 3])):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"base": base, "axes": {"seed": seeds}}))
        sweeps.append(path)
    log, go, runs_root = tmp_path / "writes.log", tmp_path / "go", tmp_path / "runs"
    processes = [subprocess.Popen([sys.executable, "-c", COUNTED_SWEEP, str(log), str(go), str(path), str(runs_root)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for path in sweeps]
    time.sleep(1.0)
    go.touch()
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-2000:] for _, err in outputs]

    points = grids.grid(base, {"seed": grids.values("seed", [0, 1, 2, 3])})
    run_dirs = [grids.run_dir(point, runs_root) for point in points]
    assert all(results.is_complete(run_dir) for run_dir in run_dirs)
    writes = [line.split() for line in log.read_text().splitlines()]
    assert Counter(run for run, _ in writes) == {run_dir.name: 3 for run_dir in run_dirs}
    writers = {run: {pid for other, pid in writes if other == run} for run, _ in writes}
    assert all(len(pids) == 1 for pids in writers.values()), writers
    assert any("waiting" in err for _, err in outputs), "the sweeps never contended for a run"
