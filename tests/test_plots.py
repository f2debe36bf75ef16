"""Figure and table rules of lotterylab.studies.plots that every study gets: 95% t intervals, titles checked against the
quantity, percent, integer ticks, legends outside, and the sentence listing collapsed points."""

import numpy as np
import pytest
import xarray as xr

from lotterylab.studies import plots


def per_seed(values, **coords):
    dims = [*coords, "seed"]
    return xr.DataArray(np.asarray(values, dtype=float), dims=dims,
                        coords={**coords, "seed": np.arange(np.shape(values)[-1])})


def test_interval_is_the_t_interval_of_the_mean_over_seeds():
    data = per_seed([[0.90, 0.91, 0.92], [0.5, 0.5, 0.5]], sparsity=[0.5, 0.9])
    mean, low, high, n = plots.interval(data)
    half = 4.3027 * 0.01 / np.sqrt(3)
    assert n == 3 and mean == pytest.approx([0.91, 0.5])
    assert low == pytest.approx([0.91 - half, 0.5], abs=1e-6) and high == pytest.approx([0.91 + half, 0.5], abs=1e-6)


def test_a_table_whose_title_names_another_quantity_is_refused():
    data = per_seed([[[0.9, 0.91, 0.92]]], method=["a"], schedule=["x"]).rename("test_acc")
    with pytest.raises(ValueError, match="title and values disagree"):
        plots._check_title(data, "Training loss at the end of each cycle")
    plots._check_title(data, "Test accuracy (%) at the end of the last cycle")
    plots._check_title(data.rename("train_loss"), "Training loss at the end of each cycle")


def test_figure_options_put_the_legend_outside_pad_ranges_and_tick_discrete_axes_at_integers():
    options = plots._opts("cycles_trained", "test_acc", np.array([1.0, 2.0, 3.0, np.nan]))
    assert options["legend_position"] == "right" and options["padding"] > 0
    assert options["xticks"] == [1, 2, 3]
    assert "xticks" not in plots._opts("sparsity", "test_acc", np.array([0.5, 0.9]))
    assert plots._opts("target", "train_flops")["logy"] is True


def test_band_shows_accuracy_and_sparsity_in_percent():
    import holoviews as hv

    hv.extension("bokeh", logo=False)
    data = per_seed([[0.90, 0.91, 0.92], [0.5, 0.52, 0.51]], sparsity=[0.5, 0.9])
    overlay = plots.band(data, "sparsity", "test_acc", "x", plots.PALETTE[0])
    curve = [layer for layer in overlay if type(layer) is hv.Curve][0]  # hv.Area is a Curve subclass
    assert list(curve.dimension_values(0)) == pytest.approx([50.0, 90.0])
    assert list(curve.dimension_values(1)) == pytest.approx([91.0, 51.0])


def test_collapsed_points_are_listed_by_name_or_said_to_be_none():
    flags = xr.Dataset({"collapsed": (("method", "target", "seed"), np.array([[[True, False]], [[False, False]]]))},
                       coords={"method": ["sculpt", "lrr"], "target": [0.98], "seed": [0, 1]})
    text = plots.collapsed_points(flags, ["method", "target"], {"sculpt": "SCULPT from 70%"})
    assert "SCULPT from 70%, target sparsity 98%" in text and "lrr" not in text
    assert plots.collapsed_points(flags.assign(collapsed=flags.collapsed & False), ["method", "target"]).startswith(
        "No layer fell below 1%")
