"""Contract tests over the model registry, parameter counts, initialisation and prunable-layer order."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
from torch import nn

from lotterylab.core.config import ModelConfig
from lotterylab.core.models import MODELS, build, init_weights
from lotterylab.pruning.masks import PRUNABLE_TYPES

# Natural example shapes, kept small (ImageNet models at 64x64) so that the suite runs in seconds on a CPU.
NATURAL_SHAPES: dict[str, tuple[int, ...]] = {
    "mlp": (1, 40),
    "cnn1d": (1, 40),
    "resnet20": (3, 32, 32),
    "resnet18": (3, 32, 32),
    "vgg16": (3, 32, 32),
    "resnet18_imagenet": (3, 64, 64),
    "resnet50_imagenet": (3, 64, 64),
}
IMAGE_MODELS = sorted(name for name, shape in NATURAL_SHAPES.items() if len(shape) == 3)
# 100 classes make every classifier large enough (>= 6400 weights) for its sample std to be a tight estimate.
NUM_CLASSES = 100


def make(
    name: str, shape: tuple[int, ...] | None = None, num_classes: int = 10, seed: int = 0, **fields: Any
) -> nn.Module:
    torch.manual_seed(seed)
    return build(ModelConfig(name=name, **fields), shape or NATURAL_SHAPES[name], num_classes)


@functools.cache
def natural_model(name: str) -> nn.Module:
    """One seed-0 build per model, shared by the tests that never change parameters.

    Initialising the large models dominates the suite's runtime on a small CPU, so they are built once.
    """
    return make(name, num_classes=NUM_CLASSES)


def param_count(name: str, shape: tuple[int, ...] | None = None, num_classes: int = 10, **fields: Any) -> int:
    # The meta device allocates nothing and skips the random init, so counting parameters costs nothing.
    with torch.device("meta"):
        return sum(p.numel() for p in make(name, shape, num_classes, **fields).parameters())


def prunable(model: nn.Module) -> list[nn.Module]:
    return [m for _, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def input_size(module: nn.Module) -> int:
    """Input features of a Linear, input channels of a conv."""
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def relative_std_error(weight: torch.Tensor, expected: float) -> float:
    return abs(weight.std().item() / expected - 1.0)


def test_every_model_has_a_natural_shape() -> None:
    assert set(NATURAL_SHAPES) == set(MODELS)


def check_forward_backward(model: nn.Module, shape: tuple[int, ...], num_classes: int) -> None:
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, param in model.named_parameters():
        # Every parameter takes part in the forward pass, so every one must get a finite gradient.
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward_on_natural_shape(name: str) -> None:
    check_forward_backward(natural_model(name), NATURAL_SHAPES[name], NUM_CLASSES)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mlp", (1, 28, 28)),
        ("resnet20", (1, 28, 28)),
        ("resnet18", (1, 28, 28)),
        ("vgg16", (1, 28, 28)),
        ("resnet18_imagenet", (1, 64, 64)),
    ],
)
def test_forward_backward_on_single_channel_images(name: str, shape: tuple[int, ...]) -> None:
    model = make(name, shape)
    assert input_size(prunable(model)[0]) == (math.prod(shape) if name == "mlp" else 1)
    check_forward_backward(model, shape, 10)


@pytest.mark.parametrize(
    ("name", "shape", "num_classes", "low", "high"),
    [
        ("resnet20", (3, 32, 32), 10, 0.26e6, 0.28e6),  # measured 272,474 (option-B shortcuts)
        ("resnet18", (3, 32, 32), 10, 11.15e6, 11.20e6),  # measured 11,173,962
        ("vgg16", (3, 32, 32), 10, 14.70e6, 14.75e6),  # measured 14,724,042 (no conv biases before BN)
        ("resnet18_imagenet", (3, 224, 224), 1000, 11.68e6, 11.70e6),  # torchvision: 11,689,512
        ("resnet50_imagenet", (3, 224, 224), 1000, 25.5e6, 25.6e6),  # torchvision: 25,557,032
    ],
)
def test_parameter_count(name: str, shape: tuple[int, ...], num_classes: int, low: float, high: float) -> None:
    assert low <= param_count(name, shape, num_classes) <= high


def test_mlp_and_cnn1d_defaults_are_pinned() -> None:
    # mlp: 40*256+256 + 256*256+256 + 256*10+10; cnn1d: 1*32*5+32 + 2*(32*32*3+32) + 32*10*10+10.
    assert param_count("mlp") == 78_858
    assert param_count("cnn1d") == 9_610


def test_mlp_width_and_depth() -> None:
    layers = prunable(make("mlp", (1, 28, 28), width=64, depth=3))
    assert [(m.in_features, m.out_features) for m in layers] == [(784, 64), (64, 64), (64, 64), (64, 10)]


def test_cnn1d_width_sets_channels() -> None:
    assert all(m.out_channels == 8 for m in prunable(make("cnn1d", width=8))[:-1])


@pytest.mark.parametrize(("width_mult", "low", "high"), [(2.0, 3.8, 4.05), (0.5, 0.24, 0.27)])
def test_width_mult_scales_resnet20_quadratically(width_mult: float, low: float, high: float) -> None:
    # Convs scale by width_mult**2; BatchNorm and the classifier only linearly, hence slightly under 4x / over 0.25x.
    ratio = param_count("resnet20", width_mult=width_mult) / param_count("resnet20")
    assert low <= ratio <= high


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_width_mult_scales_other_cifar_models(name: str) -> None:
    ratio = param_count(name, width_mult=0.5) / param_count(name)
    assert 0.24 <= ratio <= 0.27


@pytest.mark.parametrize("name", sorted(MODELS))
def test_kaiming_normal_init(name: str) -> None:
    layers = prunable(natural_model(name))
    # From 4000 weights up the sample std's own error is about 1%, well inside the 5% tolerance; smaller are skipped.
    large = [m for m in layers if m.weight.numel() >= 4000]
    assert layers[-1] in large
    for module in large:
        assert relative_std_error(module.weight, math.sqrt(2.0 / module.weight[0].numel())) < 0.05, module
    for module in layers:
        assert module.bias is None or not module.bias.any()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pytorch_init_is_left_alone(name: str) -> None:
    # PyTorch's default Linear init is uniform with bound 1/sqrt(fan_in): std 1/sqrt(3 fan_in), not sqrt(2/fan_in).
    classifier = prunable(make(name, num_classes=NUM_CLASSES, init="pytorch"))[-1]
    assert relative_std_error(classifier.weight, 1.0 / math.sqrt(3.0 * classifier.in_features)) < 0.05
    assert classifier.bias.any()


def test_init_weights_resets_batchnorm() -> None:
    model = make("resnet20", init="pytorch")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        nn.init.uniform_(norm.weight, 2.0, 3.0)
        nn.init.uniform_(norm.bias, 2.0, 3.0)
    init_weights(model)
    assert all((n.weight == 1).all() and (n.bias == 0).all() for n in norms)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_prunable_order_matches_execution_order(name: str) -> None:
    shape, model = NATURAL_SHAPES[name], natural_model(name)
    layers = prunable(model)
    executed: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, _inputs, _output: executed.append(m)) for m in layers]
    with torch.no_grad():
        model(torch.randn(2, *shape))
    for hook in hooks:
        hook.remove()
    # Masks treat the first module in named_modules() as the input layer and the last as the classifier.
    assert executed == layers
    assert input_size(layers[0]) == (math.prod(shape) if name == "mlp" else shape[0])
    assert isinstance(layers[-1], nn.Linear) and layers[-1].out_features == NUM_CLASSES


@pytest.mark.parametrize("name", sorted(MODELS))
def test_same_seed_same_parameters(name: str) -> None:
    # Parameters only: the shared model's BatchNorm running statistics may have moved in a forward pass.
    shared = dict(natural_model(name).named_parameters())
    rebuilt = dict(make(name, num_classes=NUM_CLASSES).named_parameters())
    assert shared.keys() == rebuilt.keys()
    assert all(torch.equal(shared[key], rebuilt[key]) for key in shared)


def test_other_seed_other_parameters() -> None:
    first, other = (dict(make("resnet20", seed=seed).named_parameters()) for seed in (0, 1))
    assert not torch.equal(first["conv.weight"], other["conv.weight"])


def test_unknown_name_lists_valid_names() -> None:
    # model_construct skips validation, so build's own check is what is under test.
    with pytest.raises(ValueError, match="unknown model 'lenet'") as error:
        build(ModelConfig.model_construct(name="lenet"), (1, 40), 10)
    assert all(name in str(error.value) for name in MODELS)


def test_config_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="resnet20"):
        ModelConfig(name="lenet")


def test_cnn1d_rejects_image_shape() -> None:
    with pytest.raises(ValueError, match="cnn1d"):
        make("cnn1d", (1, 28, 28))


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_reject_sequence_shape(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make(name, (1, 40))
