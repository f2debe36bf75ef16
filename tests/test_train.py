"""The training options (channels_last, bf16 autocast, compile) against fp32 eager on CPU, within stated tolerances."""

import pytest
import torch

from lotterylab.core import config, data, models
from lotterylab.training.train import Trainer

TOLERANCE = {"channels_last": 1e-4, "bf16": 3e-2}  # relative, on the epoch's mean training loss


def trained(**train) -> tuple[float, dict[str, torch.Tensor]]:
    cfg = config.from_dict({
        "data": {"name": "synthetic", "shape": [3, 16, 16], "train_size": 256, "test_size": 64, "batch_size": 64},
        "model": {"name": "resnet20", "width_mult": 0.5},
        "optimizer": {"lr": 0.01},  # small steps keep rounding differences from being amplified by training
        "schedule": {"epochs": 1},
        "train": {"progress": False, **train},
    })
    dataset = data.load(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, models.build(cfg.model, dataset.input_shape, dataset.num_classes), dataset,
                      torch.device("cpu"))
    loss = trainer.train_epoch(0, 0)[0]
    return loss, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def reference():
    return trained()


@pytest.mark.parametrize("option", sorted(TOLERANCE))
def test_option_matches_fp32_eager(reference, option):
    loss, weights = trained(**{option: True})
    assert loss == pytest.approx(reference[0], rel=TOLERANCE[option])
    changed = [k for k in weights if weights[k].is_floating_point() and not torch.equal(weights[k], reference[1][k])]
    if option == "channels_last":
        for name in changed:
            # oneDNN picks other kernels per thread count: 1.6e-4 measured with OMP_NUM_THREADS=1, < 1e-4 with 2.
            torch.testing.assert_close(weights[name], reference[1][name], rtol=1e-3, atol=3e-4)
    else:
        assert changed, "bf16 autocast must change the arithmetic"


@pytest.mark.slow
def test_compile_matches_eager_on_an_mlp():
    """torch.compile (inductor on CPU) against eager: same steps, fused kernels; one epoch of the MNIST-1D MLP."""
    def run(compile_: bool):
        cfg = config.from_dict({
            "data": {"name": "mnist1d", "train_size": 512, "test_size": 128, "batch_size": 128},
            "model": {"name": "mlp", "width": 64, "depth": 1},
            "mask": {"sparsity": 0.0},
            "train": {"progress": False, "compile": compile_},
        })
        dataset = data.load(cfg.data, cfg.seed)
        torch.manual_seed(cfg.seed)
        trainer = Trainer(cfg, models.build(cfg.model, dataset.input_shape, dataset.num_classes), dataset,
                          torch.device("cpu"))
        assert isinstance(trainer.forward, torch._dynamo.eval_frame.OptimizedModule) == compile_
        loss = trainer.train_epoch(0, 0)[0]
        return loss, trainer.evaluate(dataset.test), trainer.model.state_dict()

    eager, compiled = run(False), run(True)
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5)
    assert compiled[1] == pytest.approx(eager[1], rel=1e-5)
    for name, weight in eager[2].items():
        torch.testing.assert_close(compiled[2][name], weight, rtol=1e-4, atol=1e-6, msg=name)
