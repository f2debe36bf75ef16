"""Study grids: run configs built from a base dict and named axes, run them all, collect them into one Dataset."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lotterylab import __version__, config, executors, paths, plans, progress, results
from lotterylab.config import Config

log = logging.getLogger(__name__)

Axis = dict[Any, dict[str, Any]]  # coordinate value -> overrides, as dotted config paths ("mask.sparsity": 0.9)
STAGE_DIM = "cycle"  # a run's `stage`: a cycle of cyclic training, a pruning level of imp/wr/lrr (0 = dense)


@dataclass(frozen=True)
class Point:
    """One run of a study: where it sits in the study's dims, and its validated config."""

    coords: dict[str, Any]
    config: Config


def values(path: str, items: Iterable[Any]) -> Axis:
    """An axis that sets one config field; each value is also its coordinate."""
    return {item: {path: item} for item in items}


def sparsities(levels: Iterable[float], method: str = "pai") -> Axis:
    """A `sparsity` axis: 0 is the dense method, every other level `method` at that sparsity."""
    return {
        float(level): {"method.name": method, "mask.sparsity": float(level)} if level else
        {"method.name": "dense", "mask.sparsity": 0.0}
        for level in levels
    }


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise config.ConfigError(f"{path}: {part} is not a section")
    node[leaf] = copy.deepcopy(value)


def grid(base: dict[str, Any], axes: dict[str, Axis], source: str = "study") -> list[Point]:
    """Every combination of the axes applied to `base` (later axes win), validated before anything runs."""
    points = []
    for combination in itertools.product(*(axis.items() for axis in axes.values())):
        raw = copy.deepcopy(base)
        coords = {}
        for dim, (coordinate, overrides) in zip(axes, combination):
            coords[dim] = coordinate
            for path, value in overrides.items():
                _set(raw, path, value)
        where = ", ".join(f"{dim}={value}" for dim, value in coords.items())
        points.append(Point(coords, config.from_dict(raw, f"{source} [{where}]")))
    return points


def run_all(points: Sequence[Point], runs_root: str | Path,
            executor: executors.Executor | dict[str, Any] | None = None, plan: str | Path | None = None,
            show_progress: bool | None = None) -> list[Path]:
    """Train every point through `executor` (an executor, a params section such as `{name: slurm, ...}`, or None
    for `local`): finished runs are reused, interrupted ones resume. `plan`, a study's report directory, records the
    points in its plan.json before any trains, for `lotterylab status` (`plans`).

    While they train, a progress bar shows runs done of the total and the run training now, at its stage and epoch,
    where `show_progress` (None: `progress.watched()`, true in JupyterLab and on a terminal, false under papermill).
    At the end one summary line (run directories trained, reused and pending; points sharing a run count once) goes
    to the log, not to the output: a report shows no bookkeeping (`lotterylab` commands print INFO records)."""
    if plan is not None:
        plans.record(points, runs_root, plan)
    start = time.time()
    labels = progress.run_labels((run_dir(point, runs_root), point.coords) for point in points)
    reused = [directory for directory in labels if results.is_complete(directory)]
    tracker = progress.StudyProgress(labels, reused, progress.watched() if show_progress is None else show_progress)
    try:
        run_dirs = executors.resolve(executor)([point.config for point in points], runs_root, callbacks=[tracker])
        finished = [directory for directory in labels if results.is_complete(directory)]
        for directory in finished:  # also those another process finished while this one waited on its lock
            tracker.on_run_end(directory)
    finally:
        tracker.close()
    pending = len(labels) - len(finished)
    log.info("%d runs%s: %d trained, %d reused%s, %.0f s", len(labels),
             f" for {len(points)} points" if len(points) != len(labels) else "", len(finished) - len(reused),
             len(reused), f", {pending} pending" if pending else "", time.time() - start)
    return run_dirs


@dataclass(frozen=True)
class Status:
    """Which points of a study have finished runs and which are still pending (queued, running or not started)."""

    finished: list[Point]
    pending: list[Point]

    def __str__(self) -> str:
        return f"{len(self.finished)} of {len(self.finished) + len(self.pending)} runs finished, " \
               f"{len(self.pending)} pending"


def status(points: Sequence[Point], runs_root: str | Path) -> Status:
    """Split the points by whether their run has finished: `collect(status(...).finished, ...)` reads what is done."""
    done = [results.is_complete(run_dir(point, runs_root)) for point in points]
    return Status([p for p, ok in zip(points, done) if ok], [p for p, ok in zip(points, done) if not ok])


def wait(points: Sequence[Point], runs_root: str | Path, poll: float = 30.0, timeout: float | None = None) -> Status:
    """Poll until every point's run has finished or `timeout` seconds have passed; print each change of count and
    return the last status (runs may still be pending after a timeout)."""
    start, shown = time.monotonic(), None
    while True:
        now = status(points, runs_root)
        if str(now) != shown:
            print(f"{now}, {time.monotonic() - start:.0f} s", flush=True)
            shown = str(now)
        if not now.pending or (timeout is not None and time.monotonic() - start >= timeout):
            return now
        time.sleep(poll)


def per_epoch(dataset) -> list[str]:
    """Names of the per-epoch variables (the METRICS first, then any quantity a run recorded by name)."""
    return [name for name in dataset.data_vars if "epoch" in dataset[name].dims]


def _point_dataset(point: Point, run_dir: Path):
    run = results.read(run_dir)
    for name in results.METRICS:  # a run written by an older version may lack one: NaN, never a KeyError
        if name not in run:
            run[name] = run.train_loss * np.nan
    if "layer_density" in run and "collapsed" not in run:  # written before results schema 3: flag at the default
        run["collapsed"] = run.layer_density < point.config.train.collapse_threshold
    names = [*per_epoch(run), *[name for name in ("layer_density", "collapsed") if name in run]]
    run = run[names].rename({"stage": STAGE_DIM})
    run["epochs_per_cycle"] = point.config.schedule.epochs
    run.attrs = {}
    return run.expand_dims({dim: [value] for dim, value in point.coords.items()})


def collect(points: Sequence[Point], runs_root: str | Path, attrs: dict[str, Any] | None = None):
    """One Dataset over the points' dims × `cycle` × `epoch`; combinations not run and epochs past a run are NaN."""
    import xarray as xr

    run_dirs = [run_dir(point, runs_root) for point in points]
    unfinished = [run_dir for run_dir in run_dirs if not results.is_complete(run_dir)]
    corrupt = [str(paths.results(run_dir)) for run_dir in unfinished if paths.results(run_dir).is_file()]
    if corrupt:
        raise ValueError(f"collect: {len(corrupt)} results files do not match their {paths.done_marker(Path()).name}"
                         f" checksum or have none, e.g. {corrupt[0]}; run_all rewrites them from their checkpoints")
    missing = [str(run_dir) for run_dir in unfinished]
    if missing:
        raise ValueError(f"collect: {len(missing)} runs are not finished, e.g. {missing[0]}; call run_all first")
    parts = [_point_dataset(point, run_dir) for point, run_dir in zip(points, run_dirs)]
    dataset = xr.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop")
    if "collapsed" in dataset:  # combinations not run are NaN after the merge: never flagged
        dataset["collapsed"] = dataset.collapsed.fillna(False).astype(bool)
    first = points[0].config
    dataset.attrs = {
        "dataset": first.data.name,
        "model": first.model.name,
        "lotterylab_version": __version__,
        "git_revision": results.git_revision(),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": json.dumps([{"coords": point.coords, "run_hash": point.config.run_hash()} for point in points]),
        **(attrs or {}),
    }
    return dataset


def cycle_end(dataset):
    """Metrics at the last epoch of each cycle (or level): dims are the study's dims × `cycle`."""
    last = dataset.epoch == dataset.epochs_per_cycle
    names = per_epoch(dataset)
    return dataset[names].where(last).max("epoch").assign_attrs(dataset.attrs)


def final(data, dim: str = STAGE_DIM):
    """Each run's value at the last cycle it trained (the runs of one study may train different numbers)."""
    last = (data.notnull() * data[dim]).max(dim).astype(int)
    return data.isel({dim: last})


def _stage_reaching(density, sparsity: float, tolerance: float) -> int:
    """One run: the first stage at `sparsity` or beyond, moved to the last of the consecutive stages that share its
    density (the final cycle of a cyclic run); -1 where none reaches it."""
    reached = np.flatnonzero(density <= (1.0 - sparsity) * (1.0 + tolerance))
    if not len(reached):
        return -1
    stage = int(reached[0])
    while stage + 1 < len(density) and np.isclose(density[stage + 1], density[stage], rtol=1e-6):
        stage += 1
    return stage


def stage_reaching(density, sparsity, tolerance: float = 0.02):
    """Per run, the `cycle` index of the network that has reached `sparsity`: an iterative run's first level at or
    beyond it, a SCULPT run's retraining stage for it (targets in increasing order), a fixed mask's last cycle.
    `tolerance` is relative to the density, for masks that round to a whole number of weights; -1 where none does."""
    import xarray as xr

    return xr.apply_ufunc(_stage_reaching, density, sparsity, kwargs={"tolerance": tolerance},
                          input_core_dims=[[STAGE_DIM], []], vectorize=True, output_dtypes=[int])


def at_stage(data, stage):
    """`data` at one `cycle` per run (`stage` from `stage_reaching`); NaN where the stage is -1."""
    return data.isel({STAGE_DIM: stage.clip(min=0)}).where(stage >= 0)


def costs(points: Sequence[Point], runs_root: str | Path, stage):
    """Training epochs and estimated FLOPs each run spent to produce its network at `stage` (see
    `flops.cost_to_reach`), over the dims of `stage`; points sharing one run read it once."""
    import xarray as xr

    from lotterylab import flops

    epochs, train_flops = (xr.full_like(stage, np.nan, dtype=float) for _ in range(2))
    cache: dict[Path, Any] = {}
    for point in points:
        where = {dim: point.coords[dim] for dim in stage.dims}
        index = int(stage.loc[where])
        if index < 0:
            continue
        directory = run_dir(point, runs_root)
        if directory not in cache:
            cache[directory] = results.read(directory)
        epochs.loc[where], train_flops.loc[where] = flops.cost_to_reach(cache[directory], index)
    return xr.Dataset({"train_epochs": epochs, "train_flops": train_flops})


def run_dir(point: Point, runs_root: str | Path) -> Path:
    """A point's run directory, absolute: a coupled run names its source by it, and must not hash a relative path."""
    return paths.run_dir(Path(runs_root), point.config.run_hash()).resolve()


def coupled_sources(source_points: Sequence[Point], runs_root: str | Path, sparsities: Iterable[float],
                    tolerance: float = 0.02) -> dict[Any, Axis]:
    """Per seed of the iterative `source_points` (finished, one point per seed), a `sparsity` axis for coupled runs:
    each target's source is that seed's run at its first level reaching the target (`stage_reaching`), an error where
    no level does."""
    import xarray as xr

    density = cycle_end(collect(source_points, runs_root)).density
    targets = xr.DataArray([float(level) for level in sparsities], dims="sparsity")
    levels = stage_reaching(density, targets, tolerance)  # (seed, sparsity)
    axes = {}
    for point in source_points:
        seed = point.coords["seed"]
        chosen = levels.sel(seed=seed)
        if int(chosen.min()) < 0:
            raise config.ConfigError(f"method.source_level: {run_dir(point, runs_root)} reaches none of "
                                     f"{targets.values.tolist()} at some level")
        axes[seed] = {float(target): {"method.source": str(run_dir(point, runs_root)),
                                      "method.source_level": int(level)}
                      for target, level in zip(targets.values, chosen.values)}
    return axes


def per_run(points: Sequence[Point], runs_root: str | Path, analysis: Callable[[Path], Any]):
    """`analysis(run_dir)` (an xarray Dataset) for every point, stacked along the points' dims; non-dim coordinates
    and attrs are dropped so that the runs merge (the study's `runs` attr names every run)."""
    import xarray as xr

    parts = []
    for point in points:
        part = analysis(run_dir(point, runs_root)).reset_coords(drop=True)
        part.attrs = {}
        parts.append(part.expand_dims({dim: [value] for dim, value in point.coords.items()}))
    return xr.merge(parts, join="outer", compat="no_conflicts", combine_attrs="drop")


def at_each_stage(analysis: Callable[[Path, int], Any]) -> Callable[[Path], Any]:
    """An analysis of one stage-end checkpoint, `analysis(run_dir, stage)`, made one of every stage along `cycle`."""
    import xarray as xr

    def every_stage(run: Path):
        stages = results.stage_count(run)
        parts = [analysis(run, stage).reset_coords(drop=True) for stage in range(stages)]
        return xr.concat(parts, dim=STAGE_DIM, combine_attrs="override").assign_coords({STAGE_DIM: np.arange(stages)})

    return every_stage


def against_source(run: Path):
    """Sign and mask overlap (`signs.against_reference`) of a coupled run's final weights with its source's weights
    at the level whose mask it trained with."""
    from lotterylab import loading, signs

    method = loading.read_config(run).method
    return signs.against_reference(run, method.source, reference_stage=method.source_level)


def lmc_between_epochs(run: Path, epochs: Sequence[int], alphas: Sequence[float] | None = None,
                       bn_batches: int | None = None):
    """LMC between a one-stage run's per-epoch checkpoints at consecutive `epochs` (e.g. every E epochs of one long
    cycle, to compare with cyclic training's cycle ends); dims `pair`, `alpha`. The run must have been trained with
    `train.keep_checkpoints` covering those epochs (an unhashed setting: a run finished without it has lost them)."""
    import xarray as xr

    from lotterylab import checkpoint, lmc, loading, paths

    loaded = loading.load_run(run)
    states = []
    for epoch in epochs:
        path = paths.checkpoint(Path(run), 0, epoch)
        if not path.is_file():
            raise loading.AnalysisError(f"{path}: no checkpoint; retrain the run with train.keep_checkpoints covering "
                                        f"epoch {epoch}")
        states.append(checkpoint.load(path, Path(run)))
    per_pair = [lmc.interpolate(loaded.model, a["model"], b["model"], loaded.data,
                                lmc.ALPHAS if alphas is None else alphas,
                                lmc.BN_BATCHES if bn_batches is None else bn_batches,
                                a["mask"], b["mask"], loaded.cfg.data.batch_size)
                for a, b in zip(states, states[1:])]
    dataset = xr.concat(per_pair, dim="pair", combine_attrs="override")
    return dataset.assign_coords(pair=np.arange(len(per_pair)))


def save(dataset, output_dir: str | Path) -> Path:
    """Write the study's Dataset as `results.nc` in the report directory."""
    path = Path(output_dir) / "results.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.to_netcdf(path, engine="h5netcdf")
    return path
