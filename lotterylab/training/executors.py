"""Executors: hand a sweep's run configs to an engine (this process, or Slurm through submitit); get run dirs back.

Every executor is `executor(configs, runs_root, callbacks=()) -> run directories`; `callbacks` are hooks of the runs it
trains in this process (`runs.RunDriver`), and `on_run_end(run_dir)` is also called for the runs it sees finish
elsewhere (a study's progress, `lotterylab.training.progress`). Runs are idempotent, resumable and locked
(`runs.run`), so an executor only has to get `runs.run(cfg, runs_root)` called somewhere, as often as it likes:
a finished run returns at once, an interrupted one resumes from its last checkpoint, and two executors handed the
same run never train it twice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, ValidationError

from lotterylab.core import paths
from lotterylab.core.config import Config, ConfigError, Section, error_line, read_yaml
from lotterylab.training import checkpoint, locks, packing, progress, results, runs
from lotterylab.training.train import Callback


class Executor(Protocol):
    """Trains the runs of `configs` under `runs_root` somewhere; returns their run directories in the order given."""

    def __call__(self, configs: Sequence[Config], runs_root: str | Path,
                 callbacks: Sequence[Callback] = ()) -> list[Path]: ...


def local(configs: Sequence[Config], runs_root: str | Path, callbacks: Sequence[Callback] = (),
          max_pack: int | None = None) -> list[Path]:
    """Train the runs in this process; on a GPU, pending runs sharing model and data train packed
    (lotterylab.training.packing); finished runs return at once."""
    return packing.run_many(configs, runs_root, max_pack, callbacks)


class LocalParams(Section):
    name: Literal["local"] = Field("local", description="train in this process")
    max_pack: int | None = Field(None, gt=0, description="runs trained as one packed model; None: 8 on CUDA, 1 on CPU")


class SlurmParams(Section):
    name: Literal["slurm"] = Field("slurm", description="submit each pending run as a Slurm job through submitit")
    folder: str = Field("slurm_logs", description="submitit's folder: job scripts, pickles and logs, per job id")
    partition: str | None = Field(None, description="Slurm partition; None is the cluster's default")
    time_min: int = Field(1440, gt=0, description="wall-clock limit of one job in minutes; past it, it is requeued")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per job (one run uses one GPU)")
    cpus_per_task: int = Field(1, gt=0, description="CPU cores per job")
    mem: str | None = Field(None, description="memory per job in Slurm's syntax, e.g. 16G; None is the default")
    array: bool = Field(True, description="one job array for the whole sweep; false: one job per run")
    array_parallelism: int = Field(256, gt=0, description="at most this many array tasks run at once")
    max_timeouts: int = Field(3, ge=0, description="requeues allowed after the time limit (preemptions: unlimited)")
    signal_delay_s: int = Field(120, gt=0, description="seconds between Slurm's warning signal and the kill")
    setup: list[str] = Field([], description="shell lines run before each job, e.g. module load or venv activation")
    extra: dict[str, str | int] = Field({}, description="more sbatch options, e.g. {account: lab, qos: high}")
    wait: bool = Field(True, description="block until every submitted run has finished; false: submit and return")
    poll_s: float = Field(10.0, gt=0, description="seconds between checks while waiting")


class JobFailed(RuntimeError):
    """A cluster job ended without finishing its run; the message names the run and the job's log."""


class TrainRun:
    """The callable one Slurm job runs: `runs.run` on one config, requeued from its checkpoint when preempted.

    submitit calls `checkpoint()` on SIGUSR2 (preemption, or `signal_delay_s` before the time limit) and requeues the
    job with what it returns. Runs checkpoint every epoch, so the requeued job only has to call `runs.run` again.
    The hook is the one `submitit.helpers.Checkpointable` defines (submitit looks for a `checkpoint` method), written
    out so that this module imports without submitit.
    """

    def __init__(self, cfg: Config, runs_root: str):
        self.cfg = cfg
        self.runs_root = runs_root

    def __call__(self) -> str:
        match_threads_to_allocation()
        run_dir = paths.run_dir(Path(self.runs_root), self.cfg.run_hash())
        attempt = locks.slurm_attempt()  # a requeued job takes over its earlier attempt's lock by this
        print(json.dumps({"run": str(run_dir), "start": start_position(run_dir), "slurm": attempt}), flush=True)
        return str(runs.run(self.cfg, self.runs_root))

    def checkpoint(self) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def match_threads_to_allocation() -> None:
    """Use as many CPU threads as the job was given (SLURM_CPUS_PER_TASK) unless OMP_NUM_THREADS says otherwise.

    torch otherwise starts one thread per core of the whole node, and jobs sharing a node oversubscribe it: four
    1-CPU jobs on 2 cores took 230 s for the sweep test instead of about 50 s.
    """
    import torch

    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(int(cpus))


def start_position(run_dir: Path) -> dict[str, int] | None:
    """(stage, epoch) that `runs.run` resumes `run_dir` from: its newest per-epoch checkpoint; None for a fresh run."""
    found = checkpoint.epoch_checkpoints(run_dir)
    if not found:
        return None
    stage, epoch = found[-1][0]
    return {"stage": stage, "epoch": epoch}


def _queued_job_ids() -> set[str] | None:
    """Job ids (array tasks one by one, as `123_4`) that Slurm still holds: pending, running or requeued; None when
    squeue fails (a busy controller), so that no job is judged lost on that look."""
    listing = subprocess.run(["squeue", "--me", "--array", "--noheader", "--format=%i"], capture_output=True,
                             text=True)
    return set(listing.stdout.split()) if listing.returncode == 0 else None


@contextlib.contextmanager
def _outside_any_job() -> Iterator[None]:
    """Hide the variables of the Slurm job this process may run in (a study orchestrated from a job), so that the
    jobs it submits do not inherit its CPUs, memory or task layout; SLURM_CONF, which names the cluster, stays."""
    prefixes = ("SLURM_", "SLURMD_", "SRUN_", "SBATCH_", "SUBMITIT_")
    hidden = {name: os.environ.pop(name) for name in list(os.environ)
              if name.startswith(prefixes) and name != "SLURM_CONF"}
    try:
        yield
    finally:
        os.environ.update(hidden)


class SlurmExecutor:
    """Submits the pending runs of a sweep as Slurm jobs (a job array or one job each) and, by default, waits."""

    def __init__(self, params: SlurmParams):
        self.params = params
        self.jobs: dict[Path, Any] = {}  # run dir -> submitit job, for this executor's submissions
        self.pending: dict[Path, TrainRun] = {}  # run dir -> what a job for it runs, for runs not seen finished

    def _submitit_executor(self) -> Any:
        try:
            import submitit
        except ImportError:
            raise ConfigError("executor: name: slurm needs submitit; pip install 'lotterylab[cluster]'") from None
        executor = submitit.SlurmExecutor(folder=self.params.folder, max_num_timeout=self.params.max_timeouts)
        options = {"partition": self.params.partition, "mem": self.params.mem, "gpus_per_node":
                   self.params.gpus_per_node or None}
        executor.update_parameters(
            time=self.params.time_min, cpus_per_task=self.params.cpus_per_task,
            array_parallelism=self.params.array_parallelism, signal_delay_s=self.params.signal_delay_s,
            setup=list(self.params.setup), additional_parameters=dict(self.params.extra), job_name="lotterylab",
            **{key: value for key, value in options.items() if value is not None})
        return executor

    def _submit(self, run_dirs: Sequence[Path]) -> list[str]:
        """Submit one job per run (as one array when `array`); the job ids."""
        if not run_dirs:
            return []
        executor = self._submitit_executor()
        with _outside_any_job():
            if self.params.array:
                with executor.batch():
                    jobs = [executor.submit(self.pending[run_dir]) for run_dir in run_dirs]
            else:
                jobs = [executor.submit(self.pending[run_dir]) for run_dir in run_dirs]
        self.jobs.update(zip(run_dirs, jobs))
        return [job.job_id for job in jobs]

    def __call__(self, configs: Sequence[Config], runs_root: str | Path,
                 callbacks: Sequence[Callback] = ()) -> list[Path]:
        """Submit the pending runs; with `wait`, block until they finish, calling `on_run_end` hooks as each does."""
        root = Path(runs_root).resolve()  # jobs start in another directory, maybe on another node
        run_dirs = [paths.run_dir(root, cfg.run_hash()) for cfg in configs]
        pending = {run_dir: TrainRun(cfg, str(root)) for run_dir, cfg in zip(run_dirs, configs)
                   if not results.is_complete(run_dir)}
        self.pending.update(pending)
        # a run another process is training (its lock is live) gets a job only if that process lets it go unfinished
        held = [run_dir for run_dir in pending if locks.run_is_held(run_dir)]
        ids = self._submit([run_dir for run_dir in pending if run_dir not in held])
        print(f"slurm: {len(ids)} runs submitted{f' (jobs {ids[0]} to {ids[-1]})' if ids else ''}, {len(held)} held "
              f"by other processes, {len(set(run_dirs)) - len(pending)} finished", flush=True)
        if self.params.wait:
            self.wait(list(pending), callbacks=callbacks)
        return run_dirs

    def poll(self, run_dirs: Sequence[Path]) -> list[Path]:
        """One look at `run_dirs`: submit those that were held and are no longer; raise JobFailed naming a run whose
        job ended without finishing it; return those not finished."""
        # read before the results: a job gone from the queue had exited before the check
        queued = _queued_job_ids() if any(run_dir in self.jobs for run_dir in run_dirs) else set()
        left = [run_dir for run_dir in run_dirs if not results.is_complete(run_dir)]
        released = []
        for run_dir in left:
            job = self.jobs.get(run_dir)
            if job is None:
                released += [] if locks.run_is_held(run_dir) or run_dir not in self.pending else [run_dir]
            elif queued is not None and job.job_id not in queued:
                raise JobFailed(f"{run_dir}: Slurm job {job.job_id} ended without finishing the run "
                                f"({self._job_error(job)}); log: {job.paths.stderr}")
        ids = self._submit(released)
        if ids:
            print(f"slurm: {len(ids)} runs released unfinished by other processes submitted (jobs {', '.join(ids)})")
        return left

    def wait(self, run_dirs: Sequence[Path], timeout: float | None = None, callbacks: Sequence[Callback] = ()) -> None:
        """Block until every run in `run_dirs` has finished (see `poll`), telling `callbacks` of each that does
        (`on_run_end`); TimeoutError after `timeout` seconds."""
        start = time.monotonic()
        while left := self.poll(run_dirs):
            for run_dir in set(run_dirs) - set(left):
                progress.notify_run_end(callbacks, run_dir)
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(f"slurm: {len(left)} runs still pending after {timeout:.0f} s, e.g. {left[0]}")
            time.sleep(self.params.poll_s)

    @staticmethod
    def _job_error(job: Any) -> str:
        """The last line of the job's error (the exception, after submitit's trace), or why there is none."""
        if not job.paths.result_pickle.exists():
            return "cancelled, killed or lost: no result"
        error = job.exception()  # the result exists, so this returns at once
        if error is None:
            return "returned, yet the run is not complete"
        parts = str(error).split("----------------------\n")  # submitit frames the job's traceback with these
        lines = [line for line in (parts[1] if len(parts) > 2 else str(error)).splitlines() if line.strip()]
        return lines[-1] if lines else type(error).__name__


EXECUTORS: dict[str, tuple[type[Section], Callable[[Any], Executor]]] = {
    "local": (LocalParams, lambda params: functools.partial(local, max_pack=params.max_pack)),
    "slurm": (SlurmParams, SlurmExecutor),
}


def from_params(section: dict[str, Any] | None, source: str = "executor") -> Executor:
    """The executor a params section names (`{name: slurm, partition: gpu, ...}`); None or {} is `local`."""
    if section is None or section == {}:
        return local
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: expected a mapping with a name, got {type(section).__name__}")
    name = section.get("name")
    if name is None:
        raise ConfigError(f"{source}: name: missing; valid: {', '.join(sorted(EXECUTORS))}")
    if name not in EXECUTORS:
        raise ConfigError(f"{source}: name: unknown executor {name!r}; valid: {', '.join(sorted(EXECUTORS))}")
    params_type, build = EXECUTORS[name]
    try:
        params = params_type.model_validate(section)
    except ValidationError as error:
        raise ConfigError(error_line(error, source)) from None
    return build(params)


def section(option: str) -> dict[str, Any]:
    """An executor section from a command-line option: an executor's name, or a YAML file holding the section
    (`{name: slurm, partition: gpu, ...}`: cluster settings kept apart from a study's scientific params)."""
    if not option.endswith((".yaml", ".yml")):
        return {"name": option}
    path = Path(option)
    raw = read_yaml(path, "executor")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a name, e.g. {{name: slurm, partition: gpu}}")
    from_params(raw, str(path))
    return raw


def resolve(executor: Executor | dict[str, Any] | None) -> Executor:
    """An executor from what a caller holds: one already built, a params section, or None for `local`."""
    return executor if callable(executor) else from_params(executor)

