"""Collecting a study's finished runs into one xarray Dataset, the selections notebooks make on it (cycle ends, the
stage reaching a sparsity, costs), per-run analyses stacked over the points, and the axes of coupled runs planned
from collected source runs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lotterylab.core import config, paths
from lotterylab.core.version import __version__
from lotterylab.studies.grids.planning import Axis, Point, run_dir
from lotterylab.training import results

STAGE_DIM = "cycle"  # a run's `stage`: a cycle of cyclic training, a pruning level of imp/wr/lrr (0 = dense)


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

    from lotterylab.pruning import flops

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
    from lotterylab.analysis import loading, signs

    method = loading.read_config(run).method
    return signs.against_reference(run, method.source, reference_stage=method.source_level)


def lmc_between_epochs(run: Path, epochs: Sequence[int], alphas: Sequence[float] | None = None,
                       bn_batches: int | None = None):
    """LMC between a one-stage run's per-epoch checkpoints at consecutive `epochs` (e.g. every E epochs of one long
    cycle, to compare with cyclic training's cycle ends); dims `pair`, `alpha`. The run must have been trained with
    `train.keep_checkpoints` covering those epochs (an unhashed setting: a run finished without it has lost them)."""
    import xarray as xr

    from lotterylab.analysis import lmc, loading
    from lotterylab.core import paths
    from lotterylab.training import checkpoint

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
