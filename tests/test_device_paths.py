"""The paths CPU tests never take on a GPU: packed vs solo runs, bf16, channels_last, compile and bitwise resume.

Marked `gpu`: `pytest -m gpu` runs them, as benchmarks/gpu_check.sh does. They train on $LOTTERYLAB_TEST_DEVICE
(default cuda, skipped where there is none); the GPU check's dry run sets it to cpu, so CPU-only CI keeps them working.
Every comparison switches TF32 off, so that fp32 means fp32 on both sides, as on CPU; real runs keep PyTorch's
defaults. Data is synthetic: MNIST-1D is generated with scipy, which the GPU machine's bundle leaves out.
"""

import os

import pytest
import torch
from test_packing import as_float64, assert_runs_close, last_weights
from test_runs import Crash, assert_states_equal, final_state, tiny

from lotterylab.core import config, data, models
from lotterylab.training import packing, results, runs
from lotterylab.training.train import Trainer

DEVICE = torch.device(os.environ.get("LOTTERYLAB_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
IMAGES = {"name": "synthetic", "shape": [3, 16, 16], "num_classes": 4, "train_size": 128, "test_size": 64,
          "batch_size": 32, "augment": True}
RESNET = {"data": IMAGES, "model": {"name": "resnet20", "width_mult": 0.5}}


@pytest.fixture(autouse=True)
def exact_fp32():
    """No TF32 and no deterministic mode leaking out of a test (runs.run turns it on for train.deterministic)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    torch.use_deterministic_algorithms(False)


def run_config(seed: int = 0, train: dict | None = None, **sections) -> config.Config:
    """tests/test_runs.py's tiny run (2 cycles of 3 epochs) as a ResNet20 on images, on DEVICE."""
    return tiny(seed=seed, **{**RESNET, **sections}, train={"progress": False, "device": str(DEVICE), **(train or {})})


def trainer(cfg: config.Config) -> Trainer:
    dataset = data.load(cfg.data, cfg.seed, DEVICE)
    torch.manual_seed(cfg.seed)
    return Trainer(cfg, models.build(cfg.model, dataset.input_shape, dataset.num_classes), dataset, DEVICE)


def test_packed_steps_equal_solo_steps_in_float64():
    """The math of a pack on this device, exactly: K = 2 ResNet20s (BatchNorm, one masked) in float64."""
    packed = [as_float64(trainer(run_config(seed))) for seed in (0, 1)]
    solo = [as_float64(trainer(run_config(seed))) for seed in (0, 1)]
    for trainers in (packed, solo):
        generator = torch.Generator().manual_seed(7)
        trainers[1].set_mask({name: (torch.rand(p.shape, generator=generator) > 0.5).double()
                              for name, p in trainers[1].params.items()})
    for epoch in range(2):
        pack = packing.Pack(packed)
        outcomes = pack.train_epoch([0, 0], epoch, [[], []])
        pack.write_back()
        for run, outcome in zip(solo, outcomes):
            assert outcome == pytest.approx(run.train_epoch(0, epoch), rel=1e-9)
    for a, b in zip(packed, solo):
        assert next(a.model.parameters()).device.type == DEVICE.type
        for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12, msg=name)


def test_packed_runs_equal_solo_runs_with_their_files(tmp_path):
    """run_many as a study calls it (packing is on by default on CUDA) against runs.run, fp32, to fp32 rounding."""
    cfgs = [run_config(seed, schedule={"epochs": 2, "warmup_epochs": 0.5}, method={"name": "pai", "cycles": 1},
                       mask={"sparsity": sparsity}) for seed, sparsity in ((0, 0.5), (1, 0.8))]
    max_pack = None if DEVICE.type == "cuda" else packing.MAX_PACK
    packed_dirs = packing.run_many(cfgs, tmp_path / "packed", max_pack=max_pack)
    for cfg, packed_dir in zip(cfgs, packed_dirs):
        solo_dir = runs.run(cfg, tmp_path / "solo")
        assert results.is_complete(packed_dir) and packed_dir.name == solo_dir.name
        assert results.read(packed_dir).attrs["device"] == results.read(solo_dir).attrs["device"]
        # Tolerances of tests/test_packing.py's BatchNorm test: vmap's grouped convolution sums in another order.
        assert_runs_close(packed_dir, solo_dir, rtol=1e-2, floor=1.0, metrics_rtol=1e-2)
    assert not torch.equal(last_weights(packed_dirs[0])["fc.weight"], last_weights(packed_dirs[1])["fc.weight"])


def one_epoch(**train) -> tuple[float, dict[str, torch.Tensor]]:
    """tests/test_train.py's epoch: ResNet20 (width 0.5) on 256 images, batch 64, small steps, on DEVICE."""
    cfg = config.from_dict({
        "data": {"name": "synthetic", "shape": [3, 16, 16], "train_size": 256, "test_size": 64, "batch_size": 64},
        "model": {"name": "resnet20", "width_mult": 0.5},
        "optimizer": {"lr": 0.01},
        "schedule": {"epochs": 1},
        "train": {"progress": False, "device": str(DEVICE), **train},
    })
    run = trainer(cfg)
    loss = run.train_epoch(0, 0)[0]
    return loss, {name: value.detach().float().cpu() for name, value in run.model.state_dict().items()}


@pytest.fixture(scope="module")
def fp32_epoch():
    return one_epoch()


@pytest.mark.parametrize("options", [{"channels_last": True}, {"bf16": True}, {"bf16": True, "channels_last": True}],
                         ids=["channels_last", "bf16", "bf16+channels_last"])
def test_training_option_matches_fp32(fp32_epoch, options):
    """One epoch with the option against fp32 eager: tests/test_train.py's tolerances (3e-2 with bf16, else 1e-4)."""
    loss, weights = one_epoch(**options)
    bf16 = options.get("bf16", False)
    assert loss == pytest.approx(fp32_epoch[0], rel=3e-2 if bf16 else 1e-4)
    changed = [name for name, weight in weights.items() if not torch.equal(weight, fp32_epoch[1][name])]
    if bf16:
        assert changed, "bf16 autocast must change the arithmetic"
    for name in changed if not bf16 else []:
        torch.testing.assert_close(weights[name], fp32_epoch[1][name], rtol=1e-3, atol=3e-4, msg=name)


def test_compile_matches_eager():
    """torch.compile (inductor: Triton kernels on CUDA) against eager on an MLP: loss, test metrics and weights."""
    signals = {"name": "synthetic", "shape": [40], "num_classes": 10, "train_size": 512, "test_size": 128,
               "batch_size": 128}

    def run(compile_: bool):
        cfg = run_config(data=signals, model={"name": "mlp", "width": 64, "depth": 1}, mask={"sparsity": 0.0},
                         method={"name": "dense", "cycles": 1}, train={"compile": compile_})
        run = trainer(cfg)
        assert isinstance(run.forward, torch._dynamo.eval_frame.OptimizedModule) == compile_
        loss = run.train_epoch(0, 0)[0]
        return loss, run.evaluate(run.data.test), run.model.state_dict()

    eager, compiled = run(False), run(True)
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5)
    assert compiled[1] == pytest.approx(eager[1], rel=1e-5)
    for name, weight in eager[2].items():
        torch.testing.assert_close(compiled[2][name], weight, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("crash_at", [(0, 1, 2), (1, 0, 0)])
def test_resume_after_interruption_is_bitwise(tmp_path, crash_at):
    """With train.deterministic, an interrupted ResNet20 run resumed on this device ends bitwise where an
    uninterrupted one does (CPU tests prove it on CPU: tests/test_runs.py)."""
    cfg = run_config(train={"deterministic": True})
    reference = runs.run(cfg, tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        runs.run(cfg, tmp_path / "resumed", callbacks=[Crash(*crash_at)])
    resumed = runs.run(cfg, tmp_path / "resumed")
    assert_states_equal(final_state(reference, 1), final_state(resumed, 1))
    assert results.read(resumed).test_acc.equals(results.read(reference).test_acc)
