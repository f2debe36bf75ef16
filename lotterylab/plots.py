"""Study figures with holoviews (bokeh backend): mean over seeds with a min–max band, labelled axes, captions."""

from __future__ import annotations

from typing import Any

import numpy as np

from lotterylab import reports

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
LABELS = {
    "cycles_trained": "LR cycles trained (levels for LRR/WR, counting the dense one)",
    "sparsity": "Sparsity",
    "target": "Target sparsity",
    "total_epoch": "Epoch (all cycles)",
    "test_acc": "Test accuracy",
    "train_acc": "Train accuracy",
    "test_loss": "Test loss",
    "train_loss": "Train loss",
    "lr": "Learning rate",
    "density": "Density",
    "layer_density": "Layer density",
    "layer_index": "Layer (input to output)",
    "alpha": "Interpolation α (0: earlier cycle, 1: later cycle)",
    "cycle_pair": "Cycles interpolated (k: cycle k to k + 1)",
    "lmc_train_loss": "Train loss along the path",
    "lmc_test_loss": "Test loss along the path",
    "train_barrier": "Train loss barrier",
    "test_barrier": "Test loss barrier",
    "eigenvalue": "Top Hessian eigenvalue",
    "epochs_trained": "Epochs trained",
    "global_overlap": "Sign overlap with LRR",
}
SIZE = {"width": 640, "height": 360}


def setup() -> None:
    """Select the bokeh backend, and give JupyterLab BokehJS once (the HTML report carries its own copy)."""
    import holoviews as hv
    from IPython.display import HTML, display

    hv.renderer("bokeh")
    hv.Store.set_current_backend("bokeh")
    script = f'<script type="text/javascript">{reports.bokehjs()}</script>'
    display(HTML(script), metadata={reports.BOKEHJS_MARKER: True})


def show(figure: Any, caption: str) -> None:
    """Display a holoviews figure as a static bokeh document (no panel, no server) with its caption below."""
    import holoviews as hv
    from bokeh.embed import components
    from IPython.display import HTML, display

    script, div = components(hv.render(figure, backend="bokeh"))
    display(HTML(f'{div}{script}<p style="max-width:{SIZE["width"]}px;font-size:90%"><em>{caption}</em></p>'))


def _dimension(name: str):
    import holoviews as hv

    return hv.Dimension(name, label=LABELS.get(name, name))


def band(data, x: str, y: str, label: str, color: str, over: str = "seed"):
    """Mean over `over` as a line with markers and the min–max over `over` as a shaded band; NaN points dropped."""
    import holoviews as hv

    mean, low, high = (np.asarray(reduce(over).transpose(x).values, dtype=float)
                       for reduce in (data.mean, data.min, data.max))
    xs = np.asarray(data[x].values)
    keep = np.isfinite(mean)
    xdim, ydim = _dimension(x), _dimension(y)
    spread = hv.Area((xs[keep], low[keep], high[keep]), xdim, [ydim, f"{y}_high"], label=label)
    line = hv.Curve((xs[keep], mean[keep]), xdim, ydim, label=label)
    markers = hv.Scatter((xs[keep], mean[keep]), xdim, ydim, label=label)
    return (spread.opts(color=color, alpha=0.2, line_alpha=0)
            * line.opts(color=color, line_width=2)
            * markers.opts(color=color, size=6, tools=["hover"]))


def bands(series: dict[str, Any], x: str, y: str, title: str, over: str = "seed"):
    """One band per labelled DataArray on shared axes, each in its own colour; all-NaN series are left out."""
    import holoviews as hv

    overlays = [band(data, x, y, label, PALETTE[index % len(PALETTE)], over)
                for index, (label, data) in enumerate(series.items()) if bool(data.notnull().any())]
    return hv.Overlay(overlays).opts(title=title, legend_position="bottom_right", show_grid=True, **SIZE)


def shaded(low, high, x: str, y: str, label: str, color: str = "#7f7f7f", over: str = "seed"):
    """The region between the means over `over` of `low` and `high` (e.g. a reference curve plus a gain), no line."""
    import holoviews as hv

    bottom, top = (np.asarray(data.mean(over).transpose(x).values, dtype=float) for data in (low, high))
    keep = np.isfinite(bottom) & np.isfinite(top)
    area = hv.Area((np.asarray(low[x].values)[keep], bottom[keep], top[keep]), _dimension(x),
                   [_dimension(y), f"{y}_high"], label=label)
    return area.opts(color=color, alpha=0.25, line_alpha=0)


def overlay(layers: list[Any], title: str):
    """Bands and shaded regions on shared axes, with the title, legend and size of every study figure."""
    import holoviews as hv

    return hv.Overlay(layers).opts(title=title, legend_position="bottom_right", show_grid=True, **SIZE)


def dots(series: dict[str, Any], x: str, y: str, title: str, over: str = "seed"):
    """Categorical `x`: the mean over `over` as a marker with a min–max error bar, one colour per series."""
    import holoviews as hv

    layers = []
    for index, (label, data) in enumerate(series.items()):
        mean, low, high = (reduce(over).transpose(x).values for reduce in (data.mean, data.min, data.max))
        xs = [str(value) for value in data[x].values]
        keep = np.isfinite(mean)
        color = PALETTE[index % len(PALETTE)]
        rows = [(xs[i], mean[i], mean[i] - low[i], high[i] - mean[i]) for i in np.flatnonzero(keep)]
        layers.append(hv.ErrorBars(rows, _dimension(x), [_dimension(y), "below", "above"]).opts(color=color))
        layers.append(hv.Scatter([row[:2] for row in rows], _dimension(x), _dimension(y), label=label)
                      .opts(color=color, size=9, tools=["hover"]))
    return hv.Overlay(layers).opts(title=title, legend_position="bottom_right", show_grid=True, **SIZE)


def table(data, rows: str, columns: str, over: str = "seed", scale: float = 100.0):
    """A DataFrame of "mean ± std" over `over` (in percent by default), `rows` × `columns`."""
    import pandas as pd

    mean, std = (data.mean(over) * scale).transpose(rows, columns), (data.std(over) * scale).transpose(rows, columns)
    cells = [[f"{m:.1f} ± {s:.1f}" if np.isfinite(m) else "" for m, s in zip(mean_row, std_row)]
             for mean_row, std_row in zip(mean.values, std.values)]
    return pd.DataFrame(cells, index=pd.Index(mean[rows].values, name=rows),
                        columns=pd.Index(mean[columns].values, name=columns))


def summary(quantities: dict[str, tuple[Any, str]], rows: str, columns: str, over: str = "seed"):
    """A DataFrame with a row per `rows` value and, per `columns` value, a column per named quantity: its mean over
    `over` in the quantity's format (e.g. "{:.1f}", "{:.2e}"), with "± std" where the runs differ."""
    import pandas as pd

    cells: dict[tuple[Any, str], list[str]] = {}
    for column in quantities[next(iter(quantities))][0][columns].values:
        for name, (data, form) in quantities.items():
            chosen = data.sel({columns: column})
            mean, std = chosen.mean(over).transpose(rows).values, chosen.std(over).transpose(rows).values
            cells[(column, name)] = [
                "" if not np.isfinite(m) else form.format(m) + (f" ± {form.format(s)}" if s > 0 else "")
                for m, s in zip(mean, std)
            ]
    index = pd.Index(quantities[next(iter(quantities))][0][rows].values, name=rows)
    return pd.DataFrame(cells, index=index).rename_axis(columns=[columns, ""])


def cycles_trained(data):
    """Relabel the `cycle` dim as the number of LR cycles trained so far (1-based), for plotting."""
    return data.assign_coords(cycle=data.cycle + 1).rename(cycle="cycles_trained")


def epochs_trained(data, per_cycle: int):
    """Relabel the `cycle` dim as the epochs trained by the end of each cycle, to put runs of different cycle lengths
    (N cycles of E epochs, one cycle of N x E) on one axis."""
    return data.assign_coords(cycle=(data.cycle + 1) * per_cycle).rename(cycle="epochs_trained")


def total_epochs(data, per_cycle: int):
    """Stack `cycle` × `epoch` into one `total_epoch` axis: epoch k of cycle c is c·per_cycle + k."""
    stacked = data.sel(epoch=slice(1, per_cycle)).stack(total_epoch=("cycle", "epoch"))
    index = stacked.cycle.values * per_cycle + stacked.epoch.values
    return stacked.drop_vars(["total_epoch", "cycle", "epoch"]).assign_coords(total_epoch=index)


def caption(dataset, what: str) -> str:
    """What was run, on which data and model, for how long, over how many seeds, when and at which revision."""
    epochs = sorted({int(value) for value in np.asarray(dataset.epochs_per_cycle).ravel() if np.isfinite(value)})
    seeds = dataset.sizes.get("seed", 1)
    return (f"{what} Data: {dataset.attrs['dataset']}; model: {dataset.attrs['model']}; "
            f"{' or '.join(map(str, epochs))} epochs per cycle; mean and min–max band over {seeds} seed"
            f"{'s' if seeds != 1 else ''}; run {dataset.attrs['created']}, lotterylab git "
            f"{dataset.attrs['git_revision'][:10]}.")
