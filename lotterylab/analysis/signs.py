"""Signs and masks: sign flips between checkpoints, sign overlap with a reference run, mask Jaccard and Hamming.

Signs are compared with `torch.sign` over the weights unpruned in both masks (a layer without a mask is dense); a flip
is any change of sign, so the sign overlap of two weight sets is one minus their flip fraction. Each result has a
`layer` dim plus `global_*` scalars pooled over all weights (not a mean of the per-layer fractions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lotterylab.analysis import loading
from lotterylab.pruning import masks


def _both_kept(name: str, like: Tensor, mask_a: masks.Mask | None, mask_b: masks.Mask | None) -> Tensor:
    kept = torch.ones_like(like, dtype=torch.bool)
    for mask in (mask_a or {}, mask_b or {}):
        if name in mask:
            kept &= mask[name].to(like.device) != 0
    return kept


def _layer_dataset(variables: dict[str, list[float]], layers: list[str], pooled: dict[str, float]):
    import xarray as xr

    data_vars = {name: ("layer", np.asarray(values, dtype=np.float64)) for name, values in variables.items()}
    data_vars.update({name: ((), value) for name, value in pooled.items()})
    return xr.Dataset(data_vars, coords={"layer": np.asarray(layers, dtype=object)})


def _fraction(part: float, whole: float) -> float:
    return part / whole if whole else float("nan")


def _sign_counts(a: dict[str, Tensor], b: dict[str, Tensor], mask_a: masks.Mask | None,
                 mask_b: masks.Mask | None) -> tuple[list[str], list[int], list[int]]:
    """Layer names, weights compared (unpruned in both) and weights whose sign differs, per layer of `a`."""
    missing = a.keys() - b.keys()
    if missing:
        raise ValueError(f"weights {sorted(missing)[0]!r}: missing from the second set")
    layers, compared, flipped = list(a), [], []
    for name in layers:
        kept = _both_kept(name, a[name], mask_a, mask_b)
        compared.append(int(kept.sum()))
        flipped.append(int((kept & (torch.sign(a[name]) != torch.sign(b[name].to(a[name].device)))).sum()))
    return layers, compared, flipped


def sign_flips(a: dict[str, Tensor], b: dict[str, Tensor], mask_a: masks.Mask | None = None,
               mask_b: masks.Mask | None = None):
    """Fraction of weights unpruned in both whose sign differs in `a` and `b`: `flips`, `compared`, `global_flips`."""
    layers, compared, flipped = _sign_counts(a, b, mask_a, mask_b)
    fractions = [_fraction(f, c) for f, c in zip(flipped, compared)]
    return _layer_dataset({"flips": fractions, "compared": compared}, layers,
                          {"global_flips": _fraction(sum(flipped), sum(compared))})


def sign_overlap(a: dict[str, Tensor], b: dict[str, Tensor], mask_a: masks.Mask | None = None,
                 mask_b: masks.Mask | None = None):
    """Fraction of weights unpruned in both with equal signs in `a` and `b`: `overlap`, `compared`, `global_overlap`."""
    layers, compared, flipped = _sign_counts(a, b, mask_a, mask_b)
    fractions = [_fraction(c - f, c) for f, c in zip(flipped, compared)]
    return _layer_dataset({"overlap": fractions, "compared": compared}, layers,
                          {"global_overlap": _fraction(sum(compared) - sum(flipped), sum(compared))})


def mask_overlap(a: masks.Mask, b: masks.Mask):
    """Per layer and pooled: Jaccard index |a & b| / |a | b| (1 when both are empty) and Hamming distance (a count)."""
    if a.keys() != b.keys():
        raise ValueError(f"masks differ in layers: {sorted(a.keys() ^ b.keys())[0]!r}")
    layers = list(a)
    intersection, union, hamming = [], [], []
    for name in layers:
        kept_a, kept_b = a[name] != 0, b[name].to(a[name].device) != 0
        intersection.append(int((kept_a & kept_b).sum()))
        union.append(int((kept_a | kept_b).sum()))
        hamming.append(int((kept_a ^ kept_b).sum()))
    jaccard = [i / u if u else 1.0 for i, u in zip(intersection, union)]
    total_union = sum(union)
    pooled = {"global_jaccard": sum(intersection) / total_union if total_union else 1.0,
              "global_hamming": float(sum(hamming))}
    return _layer_dataset({"jaccard": jaccard, "hamming": hamming}, layers, pooled)


def _weights(state: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    return {name: state[name] for name in names}


def between_stages(run_dir: str | Path, pairs: Sequence[tuple[int, int]] | None = None, device: str | None = None):
    """Sign flips and mask overlap between stage-end checkpoints of a run (consecutive by default); dims pair, layer."""
    import xarray as xr

    loaded = loading.load_run(run_dir, device)
    pairs = loaded.stage_pairs(pairs, "signs")
    names, per_pair = loaded.prunable_names(), []
    for stage_a, stage_b in pairs:
        state_a, state_b = loaded.state(stage_a), loaded.state(stage_b)
        mask_a = loading.full_mask(names, state_a["mask"], state_a["model"])
        mask_b = loading.full_mask(names, state_b["mask"], state_b["model"])
        flips = sign_flips(_weights(state_a["model"], names), _weights(state_b["model"], names), mask_a, mask_b)
        per_pair.append(xr.merge([flips, mask_overlap(mask_a, mask_b)]))
    return loaded.stack_pairs(per_pair, pairs)


def against_reference(run_dir: str | Path, reference_dir: str | Path, stage: int = -1, reference_stage: int = -1,
                      device: str | None = None):
    """Sign overlap and mask overlap of a run's stage-end weights (last stage by default) with a reference run's."""
    import xarray as xr

    loaded, reference = loading.load_run(run_dir, device), loading.load_run(reference_dir, device)
    names = loaded.prunable_names()
    if reference.prunable_names() != names:
        raise loading.AnalysisError(f"{reference.run}: its model's layers differ from those of {loaded.run}")
    state, other = loaded.state(stage), reference.state(reference_stage)
    mask = loading.full_mask(names, state["mask"], state["model"])
    other_mask = loading.full_mask(names, other["mask"], other["model"])
    overlap = sign_overlap(_weights(state["model"], names), _weights(other["model"], names), mask, other_mask)
    dataset = xr.merge([overlap, mask_overlap(mask, other_mask)])
    dataset.attrs.update({**loaded.attrs(), "reference_run_dir": str(reference.run),
                          "reference_run_hash": reference.cfg.run_hash(), "stage": loaded.stage_index(stage),
                          "reference_stage": reference.stage_index(reference_stage)})
    return dataset
