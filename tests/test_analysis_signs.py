"""Sign flips, sign overlap and mask overlap (Jaccard, Hamming) on tiny literal tensors with hand-worked answers."""

import math

import pytest
import torch

from lotterylab.analysis import signs

A = {"fc1.weight": torch.tensor([[1.0, -2.0], [3.0, -4.0]]), "fc2.weight": torch.tensor([0.5, -0.5, 0.1])}
B = {"fc1.weight": torch.tensor([[-1.0, -2.0], [3.0, 4.0]]), "fc2.weight": torch.tensor([0.2, 0.3, -0.1])}
MASK_A = {"fc1.weight": torch.tensor([[1.0, 1.0], [1.0, 0.0]]), "fc2.weight": torch.tensor([1.0, 1.0, 0.0])}
MASK_B = {"fc1.weight": torch.tensor([[1.0, 0.0], [1.0, 1.0]]), "fc2.weight": torch.tensor([1.0, 1.0, 1.0])}


def test_sign_flips_without_masks_count_every_weight():
    result = signs.sign_flips(A, B)
    # fc1: positions (0,0) and (1,1) change sign -> 2 of 4; fc2: positions 1 and 2 -> 2 of 3.
    assert result.flips.sel(layer="fc1.weight") == pytest.approx(0.5)
    assert result.flips.sel(layer="fc2.weight") == pytest.approx(2 / 3)
    assert result.compared.values.tolist() == [4, 3]
    assert float(result.global_flips) == pytest.approx(4 / 7)


def test_sign_flips_only_compare_weights_unpruned_in_both():
    result = signs.sign_flips(A, B, MASK_A, MASK_B)
    # fc1 kept in both: (0,0) and (1,0); only (0,0) flips -> 1 of 2. fc2 kept in both: 0 and 1; 1 flips -> 1 of 2.
    assert result.flips.values.tolist() == pytest.approx([0.5, 0.5])
    assert result.compared.values.tolist() == [2, 2]
    assert float(result.global_flips) == pytest.approx(2 / 4)


def test_sign_overlap_is_one_minus_flips_and_one_for_identical_weights():
    overlap = signs.sign_overlap(A, B, MASK_A, MASK_B)
    flips = signs.sign_flips(A, B, MASK_A, MASK_B)
    assert overlap.overlap.values.tolist() == pytest.approx((1 - flips.flips).values.tolist())
    assert float(overlap.global_overlap) == pytest.approx(0.5)
    assert float(signs.sign_overlap(A, A).global_overlap) == 1.0


def test_a_layer_with_nothing_in_common_has_no_flip_fraction():
    disjoint = {"fc1.weight": 1 - MASK_A["fc1.weight"], "fc2.weight": MASK_A["fc2.weight"]}
    result = signs.sign_flips(A, B, MASK_A, disjoint)
    assert math.isnan(float(result.flips.sel(layer="fc1.weight")))
    assert float(result.global_flips) == pytest.approx(1 / 2)  # fc2 only: positions 0 (same) and 1 (flip)


def test_mask_overlap_jaccard_and_hamming_by_hand():
    result = signs.mask_overlap(MASK_A, MASK_B)
    # fc1: A keeps {00, 01, 10}, B keeps {00, 10, 11}: intersection 2, union 4, they differ at 01 and 11.
    assert result.jaccard.sel(layer="fc1.weight") == pytest.approx(0.5)
    assert int(result.hamming.sel(layer="fc1.weight")) == 2
    # fc2: A keeps {0, 1}, B keeps {0, 1, 2}: intersection 2, union 3, they differ at 2.
    assert result.jaccard.sel(layer="fc2.weight") == pytest.approx(2 / 3)
    assert int(result.hamming.sel(layer="fc2.weight")) == 1
    assert float(result.global_jaccard) == pytest.approx(4 / 7)
    assert float(result.global_hamming) == 3


def test_mask_overlap_of_identical_and_complementary_masks():
    same = signs.mask_overlap(MASK_A, MASK_A)
    assert same.jaccard.values.tolist() == [1.0, 1.0] and float(same.global_hamming) == 0
    complement = {name: 1 - mask for name, mask in MASK_A.items()}
    opposite = signs.mask_overlap(MASK_A, complement)
    assert float(opposite.global_jaccard) == 0.0
    assert float(opposite.global_hamming) == 7


def test_mismatched_layers_are_an_error_naming_the_layer():
    with pytest.raises(ValueError, match="fc2.weight"):
        signs.mask_overlap(MASK_A, {"fc1.weight": MASK_B["fc1.weight"]})
    with pytest.raises(ValueError, match="fc2.weight"):
        signs.sign_flips(A, {"fc1.weight": B["fc1.weight"]})
