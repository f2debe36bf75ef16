"""A real single-node Slurm on localhost (munged, slurmctld, slurmd from a slurm.conf written here) running a sweep
through the slurm executor: one job cancelled and requeued, one preempted through submitit's checkpoint hook; both
resume from their checkpoints. Skips only where Slurm's binaries are absent (CI installs slurm-wlm and munge).

The interruptions are synchronized on run state, not on time: every job holds at a barrier file right after its
first cycle's checkpoint, the test interrupts the jobs it chose while they hold there, then removes the barrier.
"""

import functools
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lotterylab.core import data, paths
from lotterylab.studies import grids
from lotterylab.training import executors, locks, results, runs

SBIN = f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin"
BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo"]
MISSING = [name for name in BINARIES if shutil.which(name, path=SBIN) is None]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason=f"Slurm binaries absent: {', '.join(MISSING)}"
                                                   f" (apt-get install slurm-wlm munge; .ci/run does)")]

CYCLES, EPOCHS = 3, 2
SWEEP = {  # its length does not matter: each job holds at the barrier after its first cycle
    "data": {"name": "mnist1d", "batch_size": 16, "train_size": 500, "test_size": 128},
    "model": {"name": "mlp", "width": 32, "depth": 1},
    "schedule": {"epochs": EPOCHS, "warmup_epochs": 0.5},
    "method": {"name": "pai", "cycles": CYCLES},
    "mask": {"sparsity": 0.5, "criterion": "random"},
    "train": {"progress": False},
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_conf(root: Path, node: str, user: str) -> str:
    return "\n".join([
        "ClusterName=lotterylab", "SlurmctldHost=localhost", f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}", "AuthType=auth/munge", "CredType=cred/munge",
        f"AuthInfo=socket={root / 'munge.socket'}", f"SlurmUser={user}", f"SlurmdUser={user}",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU", "SchedulerType=sched/builtin", "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none", "MpiDefault=none",
        "ReturnToService=2", "KillWait=2", "MinJobAge=600",
        "SlurmdParameters=config_overrides",  # 4 job slots whatever the machine has: the sweep's jobs run together
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP", ""])


def _logs(root: Path) -> str:
    tails = []
    for name in ("daemons.out", "munged.log", "slurmctld.log", "slurmd.log"):
        path = root / name
        lines = path.read_text(errors="replace").splitlines()[-15:] if path.is_file() else ["(no log)"]
        tails.append(f"--- {name}\n" + "\n".join(lines))
    return "\n".join(tails)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """munged, slurmctld and slurmd in the foreground, state in a temporary directory; SLURM_CONF points at it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _cluster(tmp_path_factory, monkeypatch)


def _cluster(tmp_path_factory, monkeypatch):
    """Start the daemons, yield once the node is idle, stop them; failures carry the tails of their logs."""
    root = Path(tmp_path_factory.mktemp("slurm"))
    for name in ("state", "spool"):
        (root / name).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, socket.gethostname().split(".")[0], getpass.getuser()))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    monkeypatch.setenv("PATH", SBIN)
    output = (root / "daemons.out").open("w")  # what the daemons print besides their logs
    start = functools.partial(subprocess.Popen, stdout=output, stderr=subprocess.STDOUT)
    daemons = [start(["munged", "--foreground", "--force", f"--socket={root / 'munge.socket'}", f"--key-file={key}",
                      f"--log-file={root / 'munged.log'}", f"--pid-file={root / 'munged.pid'}",
                      f"--seed-file={root / 'munged.seed'}"])]
    try:
        deadline = time.monotonic() + 10
        while not (root / "munge.socket").exists():
            assert time.monotonic() < deadline and daemons[0].poll() is None, f"munged did not start\n{_logs(root)}"
            time.sleep(0.1)
        daemons.append(start(["slurmctld", "-D", "-i", "-f", str(conf)]))
        daemons.append(start(["slurmd", "-D", "-f", str(conf)]))
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                break
            exited = [daemon.args[0] for daemon in daemons if daemon.poll() is not None]
            assert not exited and time.monotonic() < deadline, \
                f"Slurm node not idle (sinfo: {state.stdout.strip() or state.stderr.strip()!r}; " \
                f"exited: {exited})\n{_logs(root)}"
            time.sleep(0.5)
        yield root
    finally:
        subprocess.run(["scancel", "--me"], capture_output=True)
        deadline = time.monotonic() + 15  # let slurmd end the jobs' processes before it stops
        while time.monotonic() < deadline and subprocess.run(["squeue", "--noheader"], capture_output=True,
                                                             text=True).stdout.strip():
            time.sleep(0.5)
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        output.close()


def _job_state(job_id: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return next((field.split("=", 1)[1] for field in shown.split() if field.startswith("JobState=")), "GONE")


def _until(condition, what: str, timeout: float = 60.0, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)
    return found


class HeldTrainRun(executors.TrainRun):
    """The job's callable with a hold: after writing its first cycle's checkpoint the job touches
    `<barrier>.<run hash>` and waits while `barrier` exists. Pickled by value (below), so the job needs no test code."""

    def __init__(self, cfg, runs_root: str, barrier: Path):
        super().__init__(cfg, runs_root)
        self.barrier = barrier

    def __call__(self) -> str:
        save, barrier = runs._save_epoch, self.barrier

        def save_then_hold(run, trainer, progress, stage_done, keep):
            save(run, trainer, progress, stage_done, keep)
            if stage_done and progress["stage"] == 0 and barrier.exists():
                barrier.with_name(f"{barrier.name}.{run.name}").touch()
                # Slurm's signals reach submitit's handlers during this sleep. The bound only keeps a job from
                # holding for ever when the test process died without cancelling it; the test never waits on it.
                give_up = time.monotonic() + 900
                while barrier.exists() and time.monotonic() < give_up:
                    time.sleep(0.05)

        runs._save_epoch = save_then_hold  # in the job's own process only
        return super().__call__()


def _held_at_barrier(barrier: Path, run_dir: Path) -> bool:
    return barrier.with_name(f"{barrier.name}.{run_dir.name}").exists()


def _attempts(job, key: str = "start") -> list:
    """Where each attempt of `job` started: TrainRun prints it first (submitit appends a requeued job's log)."""
    lines = Path(job.paths.stdout).read_text().splitlines()
    return [json.loads(line)[key] for line in lines if line.startswith('{"run"')]


@pytest.fixture
def held_jobs(tmp_path, monkeypatch):
    """Jobs that hold at a barrier file after their first cycle; the barrier's path."""
    import cloudpickle  # submitit's pickler: the jobs unpickle HeldTrainRun from its code, not from this module

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    barrier = tmp_path / "barrier"
    barrier.touch()
    monkeypatch.setattr(executors, "TrainRun", lambda cfg, root: HeldTrainRun(cfg, root, barrier))
    yield barrier
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_slurm_sweep_survives_scancel_and_preemption(slurm_cluster, tmp_path, held_jobs):
    barrier = held_jobs
    points = grids.grid(SWEEP, {"seed": grids.values("seed", [0, 1, 2, 3])})
    data.load(points[0].config.data, 0)  # MNIST-1D cached once here, not generated by four jobs at once
    executor = executors.from_params({"name": "slurm", "folder": str(tmp_path / "logs"), "wait": False,
                                      "poll_s": 0.5, "time_min": 30, "signal_delay_s": 30})
    start = time.monotonic()
    elsewhere = locks.RunLock(paths.lock(grids.run_dir(points[3], tmp_path / "runs")))
    with elsewhere:  # another process is training the last run: no job for it while it holds the lock
        run_dirs = grids.run_all(points, tmp_path / "runs", executor)
    assert set(executor.jobs) == set(run_dirs[:3]) and len(grids.status(points, tmp_path / "runs").pending) == 4
    assert executor.poll(run_dirs) == run_dirs and set(executor.jobs) == set(run_dirs)  # released unfinished
    cancelled, preempted = run_dirs[0], run_dirs[1]
    cancelled_job, preempted_job = executor.jobs[cancelled], executor.jobs[preempted]

    # generous: four jobs start torch on two shared cores; a bound on a failure, not a synchronization
    _until(lambda: _held_at_barrier(barrier, cancelled) and _held_at_barrier(barrier, preempted),
           f"{cancelled} and {preempted} at the barrier after their first cycle", timeout=240)
    before = {run_dir: os.stat(paths.stage_end(run_dir, 0)) for run_dir in (cancelled, preempted)}
    # scancel: the job is killed outright (submitit ignores SIGTERM; SIGKILL follows KillWait), then requeued by hand
    subprocess.run(["scancel", cancelled_job.job_id], check=True)
    # preemption: Slurm's warning signal reaches submitit, which calls TrainRun.checkpoint and requeues the job itself
    subprocess.run(["scancel", "--signal=USR2", preempted_job.job_id], check=True)
    _until(lambda: _job_state(cancelled_job.job_id) == "CANCELLED", "the cancelled job to end")
    assert not results.is_complete(cancelled) and not paths.stage_end(cancelled, 1).exists()
    subprocess.run(["scontrol", "requeue", cancelled_job.job_id], check=True)
    for job in (cancelled_job, preempted_job):
        _until(lambda: _job_state(job.job_id) == "PENDING", f"job {job.job_id} requeued")
    assert not paths.stage_end(preempted, 1).exists()
    barrier.unlink()  # the requeued attempts and the other jobs run to the end
    for job in (cancelled_job, preempted_job):
        # a requeued job waits 2 minutes before it may start again; this cluster has no one else to wait for
        subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"], check=True)

    executor.wait(run_dirs, timeout=150)
    print(f"sweep with two interruptions: {time.monotonic() - start:.0f} s")
    assert grids.status(points, tmp_path / "runs").pending == []
    for run_dir in run_dirs:
        run = results.read(run_dir)
        assert run.sizes["stage"] == CYCLES and int(run.train_loss.notnull().sum()) == CYCLES * EPOCHS
    assert "Calling checkpoint method" in Path(preempted_job.paths.stdout).read_text()  # submitit ran the hook
    for run_dir, job in ((cancelled, cancelled_job), (preempted, preempted_job)):
        first, *later = _attempts(job)
        assert first is None and len(later) == 1, f"{run_dir}: attempts started at {[first, *later]}"
        assert later[0]["stage"] * EPOCHS + later[0]["epoch"] > 0, f"{run_dir} restarted from scratch: {later}"
        # Slurm numbers the attempts: a requeued job on another node takes over its earlier attempt's lock by this
        (job_id, first_count), (same_id, later_count) = _attempts(job, "slurm")
        assert same_id == job_id and later_count > first_count, \
            f"SLURM_RESTART_COUNT did not grow: {first_count} -> {later_count}"
    for run_dir, stat in before.items():  # a restarted run would have rewritten its first cycle's checkpoint
        after = os.stat(paths.stage_end(run_dir, 0))
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), f"{run_dir}: cycle 0 trained again"
    for run_dir in run_dirs[2:]:
        assert _attempts(executor.jobs[run_dir]) == [None]


def test_a_job_that_fails_is_named_with_its_error_and_log(slurm_cluster, tmp_path):
    broken = {**SWEEP, "data": {"name": "cifar10", "root": str(tmp_path / "no-cifar"), "download": False}}
    points = grids.grid(broken, {"seed": grids.values("seed", [0])})
    executor = executors.from_params({"name": "slurm", "folder": str(tmp_path / "logs"), "poll_s": 0.5})
    with pytest.raises(executors.JobFailed) as failed:
        grids.run_all(points, tmp_path / "runs", executor)
    message = str(failed.value)
    job = executor.jobs[grids.run_dir(points[0], tmp_path / "runs")]
    assert message.startswith(f"{grids.run_dir(points[0], tmp_path / 'runs')}: Slurm job {job.job_id} ended without")
    assert "no-cifar" in message and message.endswith(f"log: {job.paths.stderr}") and "\n" not in message
