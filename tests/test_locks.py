"""Concurrent sweeps: one lock per run, stale locks taken over, N processes into one directory, corrupt files named."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from lotterylab.core import data, paths
from lotterylab.studies import grids
from lotterylab.training import locks, results, runs

TESTS = os.path.dirname(__file__)
TINY = {
    "data": {"name": "mnist1d", "batch_size": 64, "train_size": 256, "test_size": 128},
    "model": {"name": "mlp", "width": 16, "depth": 1},
    "schedule": {"epochs": 1, "warmup_epochs": 0.5},
    "method": {"name": "dense", "cycles": 1},
    "train": {"progress": False},
}


def _points(seeds):
    return grids.grid(TINY, {"seed": grids.values("seed", seeds)})


def _script(out: Path, seed: int, starts: Path, go: Path) -> str:
    """A process that runs one tiny point; its first step appends its pid to `starts`, then waits for `go`."""
    return textwrap.dedent(f"""
        import os, pathlib, sys, time
        sys.path.insert(0, {TESTS!r})
        from test_locks import _points
        from lotterylab.training import runs

        class Started:
            def on_step(self, trainer, stage, epoch, step):
                if (stage, epoch, step) == (0, 0, 0):
                    with open({str(starts)!r}, "a") as handle:
                        handle.write(f"{{os.getpid()}}\\n")
                    deadline = time.time() + 30
                    while not pathlib.Path({str(go)!r}).exists() and time.time() < deadline:
                        time.sleep(0.05)

        print(runs.run(_points([{seed}])[0].config, {str(out)!r}, callbacks=[Started()]))
    """)


def _spawn(script: str, stderr) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.05)
    return condition()


def test_three_processes_with_different_configs_all_finish_and_collect(tmp_path):
    data.load(_points([0])[0].config.data, 0, torch.device("cpu"))  # the shared MNIST-1D cache, made once up front
    starts, go = tmp_path / "starts", tmp_path / "go"
    go.touch()
    procs = [_spawn(_script(tmp_path / "runs", seed, starts, go), subprocess.PIPE) for seed in range(3)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err for _, err in outputs]
    collected = grids.collect(_points(range(3)), tmp_path / "runs")
    assert collected.sizes["seed"] == 3 and bool(collected.test_acc.notnull().all())
    assert len(starts.read_text().split()) == 3
    assert not any(Path(out.strip(), "lock").exists() for out, _ in outputs)


def test_two_processes_with_one_config_train_it_once_and_return_the_same_run(tmp_path):
    starts, go = tmp_path / "starts", tmp_path / "go"
    script = _script(tmp_path / "runs", 0, starts, go)
    logs = [(tmp_path / f"stderr{i}").open("w") for i in range(2)]
    first = _spawn(script, logs[0])
    assert _wait_for(starts.exists, 60), "the first process never started training"
    second = _spawn(script, logs[1])
    waited = _wait_for(lambda: "waiting" in (tmp_path / "stderr1").read_text(), 60)
    go.touch()
    outs = [proc.communicate(timeout=120)[0].strip() for proc in (first, second)]
    assert waited, (tmp_path / "stderr1").read_text()
    assert [first.returncode, second.returncode] == [0, 0], [(tmp_path / f"stderr{i}").read_text() for i in range(2)]
    assert len(starts.read_text().split()) == 1, "both processes trained the same run"
    assert outs[0] == outs[1] and results.is_complete(Path(outs[0]))
    assert not paths.lock(Path(outs[0])).exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path):
    cfg = _points([0])[0].config
    lock = paths.lock(paths.run_dir(tmp_path, cfg.run_hash()))
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "time": 0, "token": "x"}))
    with pytest.warns(UserWarning, match=rf"{lock}: taking over a stale lock \(pid \d+ is dead on this host"):
        run_dir = runs.run(cfg, tmp_path)
    assert results.is_complete(run_dir) and not lock.exists()


def test_old_lock_from_another_host_is_stale_and_a_fresh_one_is_waited_for(tmp_path):
    lock_path = tmp_path / "lock"
    lock_path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": 0, "token": "x"}))
    os.utime(lock_path, (time.time() - 100, time.time() - 100))
    with pytest.warns(UserWarning, match="untouched for 100 s"):
        with locks.RunLock(lock_path, stale_after=50):
            assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    assert not lock_path.exists()

    lock_path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": 0, "token": "x"}))
    waiter = threading.Thread(target=locks.RunLock(lock_path, stale_after=50, poll=0.02).acquire)
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive(), "a live lock held elsewhere was not waited for"
    lock_path.unlink()
    waiter.join(5)
    assert not waiter.is_alive() and json.loads(lock_path.read_text())["pid"] == os.getpid()


def test_release_leaves_another_holders_lock_alone(tmp_path):
    lock = locks.RunLock(tmp_path / "lock")
    lock.acquire()
    (tmp_path / "lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "theirs"}))
    lock.release()
    assert (tmp_path / "lock").exists()


def test_collect_names_a_corrupt_results_file(tmp_path):
    points = _points([0])
    run_dir = grids.run_all(points, tmp_path)[0]
    paths.results(run_dir).write_bytes(paths.results(run_dir).read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match="do not match") as error:
        grids.collect(points, tmp_path)
    assert str(paths.results(run_dir)) in str(error.value) and "\n" not in str(error.value)
    grids.run_all(points, tmp_path)  # rewrites the results from the run's checkpoints
    assert grids.collect(points, tmp_path).sizes["seed"] == 1


@pytest.mark.parametrize("job, restarts, taken", [("17", "1", True), ("17", "0", False), ("18", "3", False)])
def test_a_requeued_slurm_job_takes_over_its_earlier_attempts_lock_at_once(tmp_path, monkeypatch, job, restarts, taken):
    """The earlier attempt ran on another node (its pid cannot be checked) and touched the lock just now."""
    lock_path = tmp_path / "lock"
    lock_path.write_text(json.dumps({"pid": 1, "host": "node-b", "time": 0, "token": "x", "slurm": ["17", 0]}))
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
    lock = locks.RunLock(lock_path)
    if taken:
        with pytest.warns(UserWarning, match="taken by attempt 0 of Slurm job 17, which is now at attempt 1"):
            assert lock.try_acquire()
        assert json.loads(lock_path.read_text())["slurm"] == ["17", 1]
        lock.release()
    else:
        assert not lock.try_acquire() and json.loads(lock_path.read_text())["host"] == "node-b"
