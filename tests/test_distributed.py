"""DDP under torchrun on CPU (gloo, 2 processes): sharding, rank-0 masks, equality with one process, and resume."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lotterylab.core import config, distributed, paths
from lotterylab.core.data import TensorSplit
from lotterylab.training import checkpoint, results, runs

WORKER = Path(__file__).with_name("ddp_worker.py")
TOLERANCE = 1e-5
"""Largest weight difference allowed between 1 and 2 processes. They differ only in summation order (two half-batch
gradients averaged by DDP vs one full-batch mean): fp32 rounding, ~1e-7 relative per step, which could compound over
the ~70 steps here to ~1e-6; measured 6e-8 (one ulp near 0.5). A mask, data-order or sharding bug moves weights by
far more: dropping the uneven last batch's weighting alone moves them by 2e-4. Metrics (sums over ranks) likewise."""


def tiny_raw(method: dict, mask: dict) -> dict:
    # 1001 and 301 examples: the last training batch (105) and the single test batch split unevenly over 2 ranks.
    return {
        "seed": 0,
        "data": {"name": "mnist1d", "batch_size": 128, "train_size": 1001, "test_size": 301},
        "model": {"name": "mlp", "width": 64, "depth": 1},
        "optimizer": {"lr": 0.05},
        "schedule": {"epochs": 3, "warmup_epochs": 1.0},
        "method": method,
        "mask": mask,
        "train": {"progress": False, "device": "cpu"},
    }


CONFIGS = {
    "pai": tiny_raw({"name": "pai", "cycles": 2}, {"sparsity": 0.5}),  # random scores: seeded per rank
    "lrr": tiny_raw({"name": "lrr", "prune_fraction": 0.2}, {"sparsity": 0.36}),  # 2 levels: 0.8, 0.64
}
STAGES = {"pai": 2, "lrr": 3}


def torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_one_process_is_rank_zero_of_one():
    model = torch.nn.Linear(2, 2)
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.is_main() and distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.wrap(model, torch.device("cpu"), sync_batchnorm=True) is model
    total = torch.tensor([3.0])
    assert distributed.sum_over_ranks(total) is total and total.item() == 3.0


def test_launch_without_rendezvous_variables_names_the_missing_one(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK is not set"):
        distributed.init(torch.device("cpu"))


@pytest.mark.parametrize("world", [2, 3])
def test_shards_together_are_the_single_process_batch(world):
    """Order and crop/flip draws come from the global batch; rank r's rows are rows r::world of it."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (23, 3, 8, 8), dtype=torch.uint8, generator=generator)
    split = TensorSplit(images, torch.arange(23), torch.full((3,), 0.5), torch.full((3,), 0.25))
    whole = list(split.batches(10, torch.Generator().manual_seed(1), augment=True))
    generators = [torch.Generator().manual_seed(1) for _ in range(world)]
    shards = [list(split.batches(10, generators[r], augment=True, shard=(r, world))) for r in range(world)]
    assert len(whole) == 3 and all(len(batches) == 3 for batches in shards)
    for step, (x, y) in enumerate(whole):
        for rank in range(world):
            shard_x, shard_y = shards[rank][step]
            assert torch.equal(shard_x, x[rank::world]) and torch.equal(shard_y, y[rank::world])
        labels = torch.cat([shards[rank][step][1] for rank in range(world)])
        assert sorted(labels.tolist()) == sorted(y.tolist())  # disjoint, and nothing left out
    assert all(torch.equal(g.get_state(), generators[0].get_state()) for g in generators)


def write_configs(directory: Path) -> dict[str, Path]:
    files = {}
    for name, raw in CONFIGS.items():
        files[name] = directory / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(raw))
    return files


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One process and 2-process torchrun runs of both configs; rank 1's mask seeds are skewed."""
    root = tmp_path_factory.mktemp("ddp")
    files = write_configs(root)
    single = {name: runs.run(config.from_dict(raw), root / "single") for name, raw in CONFIGS.items()}
    (root / "record").mkdir()
    done = torchrun(str(WORKER), *map(str, files.values()), "--out", str(root / "ddp"), "--record",
                    str(root / "record"), "--skew")
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = {name: paths.run_dir(root / "ddp", config.from_dict(raw).run_hash()) for name, raw in CONFIGS.items()}
    return root, files, single, ddp


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_masks_and_weights_are_identical_across_ranks(launched, name):
    root = launched[0]
    ranks = [torch.load(root / "record" / f"rank{r}-{name}.pt") for r in (0, 1)]
    assert sorted(ranks[0]) == sorted(ranks[1]) == list(range(STAGES[name]))
    assert ranks[0][STAGES[name] - 1]["mask"], "the last stage trains a sparse mask"
    for stage in ranks[0]:
        for part in ("mask", "model"):
            mine, theirs = ranks[0][stage][part], ranks[1][stage][part]
            assert mine.keys() == theirs.keys(), (stage, part)
            assert all(torch.equal(mine[k], theirs[k]) for k in mine), (stage, part)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_equal_one(launched, name):
    _, _, single, ddp = launched
    assert results.is_complete(ddp[name]) and results.read(ddp[name]).attrs["world_size"] == 2
    for stage in range(STAGES[name]):
        one, two = (checkpoint.load(paths.stage_end(run, stage)) for run in (single[name], ddp[name]))
        assert all(torch.equal(one["mask"][k], two["mask"][k]) for k in one["mask"]), stage
        assert max_difference(one["model"], two["model"]) < TOLERANCE, stage
        momenta = [{k: v["momentum_buffer"] for k, v in state["optimizer"]["state"].items()} for state in (one, two)]
        assert max_difference(*momenta) < TOLERANCE, stage
    # Metrics are summed over ranks: each rank's own half would give different losses and accuracies.
    for metric in ("train_loss", "train_acc", "test_loss", "test_acc"):
        a, b = (results.read(run)[metric].values for run in (single[name], ddp[name]))
        assert abs(a - b).max() < TOLERANCE, metric


@pytest.mark.slow
def test_resume_under_ddp_after_sigterm_continues_the_run(launched, tmp_path):
    root, files, _, ddp = launched
    killed = torchrun(str(WORKER), str(files["lrr"]), "--out", str(tmp_path), "--kill", "1,1,3")
    run_dir = paths.run_dir(tmp_path, config.load(files["lrr"]).run_hash())
    assert killed.returncode != 0 and not results.is_complete(run_dir), killed.stderr[-3000:]
    assert [position for position, _ in checkpoint.epoch_checkpoints(run_dir)][-1] == (1, 1)
    first_stage_end = paths.stage_end(run_dir, 0).stat().st_mtime_ns
    resumed = torchrun("-m", "lotterylab.cli", "run", str(files["lrr"]), "--out", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines() == [str(run_dir)]  # rank 0 alone prints
    assert paths.stage_end(run_dir, 0).stat().st_mtime_ns == first_stage_end  # resumed, not restarted
    # Same ranks, same reduction order: the resumed run is bitwise the uninterrupted one, history included.
    for stage in range(STAGES["lrr"]):
        a, b = (checkpoint.load(paths.stage_end(run, stage)) for run in (ddp["lrr"], run_dir))
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), stage
        assert a["history"] == b["history"], stage
