"""Criteria: SNIP, GraSP and SynFlow against hand-made autograd references, and the model left as it was."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lotterylab.core.config import DataConfig, MaskConfig
from lotterylab.core.data import Data, TensorSplit, load
from lotterylab.pruning import masks
from lotterylab.pruning.criteria import CRITERIA, grasp_scores, snip_scores, synflow_scores


@pytest.fixture(scope="module")
def data():
    return load(DataConfig(name="synthetic", shape=[1, 8, 8], train_size=64, test_size=16), seed=0)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def reference_batches(data, count: int, batch_size: int, seed: int) -> list:
    return list(data.train.batches(batch_size, torch.Generator().manual_seed(seed)))[:count]


@pytest.mark.parametrize("batches, batch_size", [(1, 512), (2, 16)])
def test_snip_is_weight_times_gradient_of_summed_batch_losses(data, batches, batch_size):
    net = mlp()
    params = masks.prunable(net)
    scores = snip_scores(net, params, data, torch.Generator().manual_seed(3), batches=batches, batch_size=batch_size)
    loss = sum(F.cross_entropy(net(x), y) for x, y in reference_batches(data, batches, batch_size, seed=3))
    grads = torch.autograd.grad(loss, list(params.values()))
    for (name, w), g in zip(params.items(), grads):
        torch.testing.assert_close(scores[name], (w * g).abs().detach())
    # A different batch gives different scores, so the comparison above depends on drawing the same batches.
    other = snip_scores(net, params, data, torch.Generator().manual_seed(4), batches=1, batch_size=16)
    assert not torch.allclose(other["1.weight"], snip_scores(net, params, data, torch.Generator().manual_seed(3),
                                                             batches=1, batch_size=16)["1.weight"])


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_is_weight_times_hessian_gradient_product(data, temperature):
    net = mlp()
    params = masks.prunable(net)
    scores = grasp_scores(net, params, data, torch.Generator().manual_seed(5), batch_size=32, temperature=temperature)
    (x, y), = reference_batches(data, 1, 32, seed=5)
    names = list(params)
    weights = tuple(p.detach() for p in params.values())

    def loss(*tensors):
        return F.cross_entropy(functional_call(net, dict(zip(names, tensors)), (x,)) / temperature, y)

    gradient = torch.autograd.functional.jacobian(loss, weights)
    _, hessian_gradient = torch.autograd.functional.hvp(loss, weights, gradient)
    for name, w, h in zip(names, weights, hessian_gradient):
        expected = w * h
        assert expected.abs().max() > 0
        torch.testing.assert_close(scores[name], expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_synflow_one_round_matches_hand_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    params = masks.prunable(net)
    scores = synflow_scores(net, params, None, torch.Generator(), density=1.0, rounds=1, input_shape=(3,))
    first, second = net[0].weight.detach().abs(), net[1].weight.detach().abs()  # (4, 3), (2, 4)
    # R = 1^T |W2| |W1| 1: dR/dW1_ij = sum_k |W2_ki|, and dR/dW2_ki = sum_j |W1_ij|.
    raw = {"0.weight": first * second.sum(0)[:, None], "1.weight": second * first.sum(1)[None, :]}
    largest = max(float(r.max()) for r in raw.values())
    for name, r in raw.items():
        torch.testing.assert_close(scores[name], 1 + r / (2 * largest))  # one round survived + scaled last score


def test_synflow_one_round_is_one_shot_and_more_rounds_never_regain(data):
    net = conv_net()
    params = masks.prunable(net)
    one_shot = synflow_scores(net, params, data, torch.Generator(), density=1.0, rounds=1)
    expected = masks.global_allocation(one_shot, 0.2)
    single = masks.global_allocation(synflow_scores(net, params, data, torch.Generator(), density=0.2, rounds=1), 0.2)
    assert all(torch.equal(single[name], expected[name]) for name in params)

    iterative = synflow_scores(net, params, data, torch.Generator(), density=0.2, rounds=5)
    mask = masks.global_allocation(iterative, 0.2)
    for name, s in iterative.items():
        # Survivors score >= rounds and the rest < rounds, so the later global top-k reproduces the iterative mask.
        assert torch.equal(mask[name] > 0, s >= 5), name
        assert torch.all(s >= 0), name
    assert any(not torch.equal(mask[name], expected[name]) for name in params)


def test_iterative_synflow_keeps_every_layer_at_high_sparsity(data):
    net = conv_net()
    params = masks.prunable(net)
    mask = masks.global_allocation(synflow_scores(net, params, data, torch.Generator(), density=0.02), 0.02)
    assert all(m.sum() > 0 for m in mask.values())
    assert masks.density(mask) == pytest.approx(0.02, abs=1 / sum(p.numel() for p in params.values()))


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
@pytest.mark.parametrize("training", [True, False])
def test_criteria_leave_the_model_as_it_was(data, criterion, training):
    net = conv_net()
    net.train(training)
    net[4].eval()  # a mixed mode must come back as well
    modes = [m.training for m in net.modules()]
    params = masks.prunable(net)
    net[7].weight.grad = torch.full_like(net[7].weight, 0.5)
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)  # non-trivial statistics, so both the signs and the values are checked
    before = {name: t.clone() for name, t in net.state_dict().items()}
    scores = CRITERIA[criterion](net, params, data, torch.Generator().manual_seed(0))
    assert {name: s.shape for name, s in scores.items()} == {name: p.shape for name, p in params.items()}
    assert all(s.device.type == "cpu" and s.dtype == torch.float32 for s in scores.values())
    after = net.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(net[7].weight.grad, torch.full_like(net[7].weight, 0.5))
    assert all(p.grad is None for name, p in net.named_parameters() if name != "7.weight")


def test_data_driven_criteria_need_data():
    net = mlp()
    for criterion in (snip_scores, grasp_scores):
        with pytest.raises(ValueError, match="needs data"):
            criterion(net, masks.prunable(net), None, torch.Generator())


def literal_data(x: list[list[float]], y: list[int]) -> Data:
    split = TensorSplit(torch.tensor(x), torch.tensor(y))
    return Data(split, split, num_classes=2, input_shape=(2,), noisy_indices=torch.empty(0, dtype=torch.int64))


def literal_net(weights: list[list[float]]) -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(weights))
    return net


def test_magnitude_and_snip_on_literal_tensors():
    net = literal_net([[1.0, -2.0], [0.5, 0.0]])
    params = masks.prunable(net)
    magnitude = CRITERIA["magnitude"](net, params, None, torch.Generator())
    assert magnitude["0.weight"].tolist() == [[1.0, 2.0], [0.5, 0.0]]
    # One example x = (1, 2), label 0: logits (-3, 0.5), dL/dW = (softmax - onehot) x^T.
    p0 = math.exp(-3.0) / (math.exp(-3.0) + math.exp(0.5))
    grad = [[(p0 - 1) * 1, (p0 - 1) * 2], [(1 - p0) * 1, (1 - p0) * 2]]
    expected = torch.tensor([[abs(1.0 * grad[0][0]), abs(-2.0 * grad[0][1])], [abs(0.5 * grad[1][0]), 0.0]])
    snip = snip_scores(net, params, literal_data([[1.0, 2.0]], [0]), torch.Generator().manual_seed(0))
    torch.testing.assert_close(snip["0.weight"], expected)
    # SNIP keeps the weight that matters most to the loss, not the largest one: |w g| ranks (0,1) > (0,0) > (1,0).
    assert masks.global_allocation(snip, 0.25)["0.weight"].tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_synflow_is_data_free_and_differs_from_magnitude():
    net = conv_net()
    params = masks.prunable(net)
    found = []
    for seed in (0, 1):
        other = load(DataConfig(name="synthetic", shape=[1, 8, 8], train_size=32, test_size=8), seed=seed)
        found.append(masks.global_allocation(synflow_scores(net, params, other, torch.Generator(), 0.2, 20), 0.2))
    assert all(torch.equal(found[0][name], found[1][name]) for name in params)
    magnitude = masks.global_allocation(CRITERIA["magnitude"](net, params, None, torch.Generator()), 0.2)
    assert any(not torch.equal(found[0][name], magnitude[name]) for name in params)


@pytest.mark.parametrize("criterion, expected", [("random", "balanced"), ("snip", "global"), ("magnitude", "global")])
def test_auto_allocation_is_balanced_for_random_and_global_for_scores(criterion, expected):
    assert MaskConfig(criterion=criterion).resolved_allocation() == expected
    assert MaskConfig(criterion=criterion, allocation="erk").resolved_allocation() == "erk"
