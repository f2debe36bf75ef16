"""Study figures with holoviews (bokeh backend): mean over seeds with a min–max band, labelled axes, captions."""

from __future__ import annotations

from typing import Any

import numpy as np

from lotterylab.studies import reports

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
LABELS = {
    "cycles_trained": "LR cycles trained",
    "sparsity": "Sparsity (%)",
    "target": "Target sparsity (%)",
    "total_epoch": "Epoch (all cycles)",
    "test_acc": "Test accuracy (%)",
    "train_acc": "Train accuracy (%)",
    "test_loss": "Test loss (cross-entropy)",
    "train_loss": "Train loss (cross-entropy)",
    "lr": "Learning rate",
    "density": "Density (%)",
    "layer_density": "Weights kept in the layer (%)",
    "layer_index": "Layer (input to output)",
    "alpha": "Interpolation α (0: earlier cycle, 1: later cycle)",
    "cycle_pair": "Cycles interpolated (k: cycle k to k + 1)",
    "lmc_train_loss": "Train loss along the path (cross-entropy)",
    "lmc_test_loss": "Test loss along the path (cross-entropy)",
    "train_barrier": "Train loss barrier (cross-entropy)",
    "test_barrier": "Test loss barrier (cross-entropy)",
    "eigenvalue": "Top Hessian eigenvalue",
    "epochs_trained": "Epochs trained",
    "train_epochs": "Training epochs",
    "train_flops": "Training FLOPs (estimated, log scale)",
    "global_overlap": "Sign overlap with LRR (%)",
    "noisy_train_acc": "Train accuracy on noisy-labelled examples (%)",
    "clean_train_acc": "Train accuracy on clean examples (%)",
    "source_sparsity": "Real sparsity of the LRR level used (%)",
}
PERCENT = {"test_acc", "train_acc", "sparsity", "target", "density", "layer_density", "global_overlap",
           "noisy_train_acc", "clean_train_acc", "source_sparsity"}
"""Quantities stored as fractions and shown in percent, in figures and tables alike."""
DISCRETE = {"cycles_trained", "cycle_pair", "layer_index", "epochs_trained"}
"""Axes of whole numbers: ticks at the values plotted, never in between."""
LOG = {"train_flops"}
SIZE = {"width": 900, "height": 380}  # the legend sits right of the plot area, outside it
LEGEND = "right"  # holoviews: outside the frame; the browser test (tests/test_browser.py) refuses one inside
PADDING = 0.06  # of each range, so that markers at either end are drawn whole
BAND = "mean over seeds, band and ± the 95% t confidence interval of the mean"


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


def _shown(name: str, values):
    """Values as shown: percent for the PERCENT quantities."""
    return values * 100.0 if name in PERCENT else values


def interval(data, over: str = "seed"):
    """Per point: mean over `over`, and the 95% t interval of that mean (NaN bounds where fewer than 2 values)."""
    from lotterylab.studies.intervals import mean_ci

    other = [dim for dim in data.dims if dim != over]
    stacked = data.transpose(*other, over).values if other else data.values[None, :]
    rows = [mean_ci(row) for row in stacked.reshape(-1, data.sizes[over])]
    shape = stacked.shape[:-1] if other else ()
    mean, low, high = (np.asarray([getattr(r, key) for r in rows], dtype=float).reshape(shape)
                       for key in ("mean", "low", "high"))
    return mean, low, high, max((r.n for r in rows), default=0)


def _opts(x: str, y: str, xs=None) -> dict[str, Any]:
    options: dict[str, Any] = {"legend_position": LEGEND, "show_grid": True, "padding": PADDING, **SIZE}
    if x in DISCRETE and xs is not None:
        options["xticks"] = sorted({int(v) for v in np.asarray(xs).ravel() if np.isfinite(v)})
    if y in ("train_barrier", "test_barrier"):
        options["yformatter"] = "%.3f"
    if y in LOG:
        options["logy"] = True
    return options


def _bounded(y: str, low, high):
    """A CI band of a percentage drawn within [0, 100], where the quantity lives (the mean always is)."""
    if y in PERCENT:
        return np.clip(low, 0.0, 100.0), np.clip(high, 0.0, 100.0)
    return low, high


def _stroke(index: int) -> dict[str, float]:
    """Marker size and line width of the index-th series: each a little smaller than the one before, so that series
    with equal values show as nested rings and stacked lines instead of hiding one another."""
    return {"size": max(4.0, 11.0 - 1.5 * index), "line_width": max(1.0, 3.5 - 0.5 * index)}


def band(data, x: str, y: str, label: str, color: str, over: str = "seed", hollow=None, index: int = 0):
    """Mean over `over` as a line with markers, the 95% CI of the mean as a shaded band; NaN points dropped.
    `hollow` (bool, dims of `data` without `over` or with it: any seed) draws those points as hollow markers, e.g.
    where a layer collapsed."""
    import holoviews as hv

    mean, low, high, _ = interval(data.transpose(x, over), over)
    mean, low, high = (_shown(y, np.asarray(v, dtype=float)) for v in (mean, low, high))
    xs = _shown(x, np.asarray(data[x].values, dtype=float))
    keep = np.isfinite(mean)
    low, high = _bounded(y, np.where(np.isfinite(low), low, mean), np.where(np.isfinite(high), high, mean))
    xdim, ydim = _dimension(x), _dimension(y)
    stroke = _stroke(index)
    spread = hv.Area((xs[keep], low[keep], high[keep]), xdim, [ydim, f"{y}_high"], label=label)
    line = hv.Curve((xs[keep], mean[keep]), xdim, ydim, label=label)
    flagged = np.zeros_like(keep)
    if hollow is not None:
        reduced = hollow.any(over) if over in hollow.dims else hollow
        flagged = np.asarray(reduced.transpose(x).values, dtype=bool)
    solid = keep & ~flagged
    layers = (spread.opts(color=color, alpha=0.2, line_alpha=0)
              * line.opts(color=color, line_width=stroke["line_width"])
              * hv.Scatter((xs[solid], mean[solid]), xdim, ydim, label=label)
              .opts(color=color, size=stroke["size"], tools=["hover"]))
    if (keep & flagged).any():
        layers = layers * hv.Scatter((xs[keep & flagged], mean[keep & flagged]), xdim, ydim).opts(
            color="white", line_color=color, line_width=2, size=stroke["size"] + 3, tools=["hover"])
    return layers


def bands(series: dict[str, Any], x: str, y: str, title: str, over: str = "seed", hollow: dict | None = None):
    """One band per labelled DataArray on shared axes, each in its own colour; all-NaN series are left out.
    `hollow` maps a label to its flags (see `band`)."""
    import holoviews as hv

    overlays = [band(data, x, y, label, PALETTE[index % len(PALETTE)], over, (hollow or {}).get(label), index)
                for index, (label, data) in enumerate(series.items()) if bool(data.notnull().any())]
    xs = np.concatenate([np.asarray(data[x].values, dtype=float).ravel() for data in series.values()])
    return hv.Overlay(overlays).opts(title=title, **_opts(x, y, xs))


def shaded(low, high, x: str, y: str, label: str, color: str = "#7f7f7f", over: str = "seed"):
    """The region between the means over `over` of `low` and `high` (e.g. a reference curve plus a gain), no line."""
    import holoviews as hv

    bottom, top = (_shown(y, np.asarray(data.mean(over).transpose(x).values, dtype=float)) for data in (low, high))
    keep = np.isfinite(bottom) & np.isfinite(top)
    area = hv.Area((_shown(x, np.asarray(low[x].values, dtype=float))[keep], bottom[keep], top[keep]),
                   _dimension(x), [_dimension(y), f"{y}_high"], label=label)
    return area.opts(color=color, alpha=0.25, line_alpha=0)


def overlay(layers: list[Any], title: str, x: str = "", y: str = ""):
    """Bands and shaded regions on shared axes, with the title, legend and size of every study figure."""
    import holoviews as hv

    return hv.Overlay(layers).opts(title=title, **_opts(x, y))


def dots(series: dict[str, Any], x: str, y: str, title: str, over: str = "seed"):
    """Categorical `x`: the mean over `over` as a marker with its 95% CI as an error bar, one colour per series,
    each series set slightly apart within its category so that none hides another."""
    import holoviews as hv

    layers = []
    categories: list[Any] = []
    for data in series.values():
        categories += [value for value in data[x].values if value not in categories]
    count = max(len(series), 1)
    for index, (label, data) in enumerate(series.items()):
        mean, low, high, _ = interval(data.transpose(x, over), over)
        mean, low, high = (_shown(y, np.asarray(v, dtype=float)) for v in (mean, low, high))
        low, high = _bounded(y, np.where(np.isfinite(low), low, mean), np.where(np.isfinite(high), high, mean))
        offset = (index - (count - 1) / 2) * 0.5 / count
        positions = np.asarray([categories.index(value) + offset for value in data[x].values], dtype=float)
        keep = np.isfinite(mean)
        color = PALETTE[index % len(PALETTE)]
        rows = [(positions[i], mean[i], mean[i] - low[i], high[i] - mean[i]) for i in np.flatnonzero(keep)]
        layers.append(hv.ErrorBars(rows, _dimension(x), [_dimension(y), "below", "above"]).opts(color=color))
        layers.append(hv.Scatter([row[:2] for row in rows], _dimension(x), _dimension(y), label=label)
                      .opts(color=color, size=9, tools=["hover"]))
    ticks = [(position, str(_axis_value(x, value))) for position, value in enumerate(categories)]
    options = {**_opts(x, y), "xticks": ticks, "xlim": (-0.5, len(categories) - 0.5)}
    return hv.Overlay(layers).opts(title=title, **options)


def _cell(mean: float, half: float, form: str) -> str:
    if not np.isfinite(mean):
        return ""
    return form.format(mean) + (f" ± {form.format(half)}" if np.isfinite(half) else " (1 seed)")


def _check_title(data, title: str) -> None:
    """A table's title must name the quantity its values are: each of the first two words of the data's LABELS entry
    begins some word of the title ("Train loss" fits "Training loss ..."; "Test accuracy" does not)."""
    name = getattr(data, "name", None)
    if name in LABELS:
        words = [word[:5].lower() for word in LABELS[name].split(" (")[0].split()[:2]]
        found = [word.lower() for word in title.replace("(", " ").split()]
        if not all(any(candidate.startswith(word) for candidate in found) for word in words):
            raise ValueError(f"table titled {title!r} shows {name} ({LABELS[name]}): title and values disagree")


def table(data, rows: str, columns: str, title: str, over: str = "seed", form: str | None = None):
    """A titled table of "mean ± half-width of the 95% CI" over `over`, `rows` × `columns`, in percent for the
    PERCENT quantities; the title must name the quantity (`_check_title`)."""
    import pandas as pd
    from IPython.display import HTML, display

    _check_title(data, title)
    name = getattr(data, "name", "")
    form = form or ("{:.1f}" if name in PERCENT else "{:.3g}")
    mean, low, high, n = interval(data.transpose(rows, columns, over), over)
    mean, low = _shown(name, mean), _shown(name, low)
    cells = [[_cell(m, m - lo, form) for m, lo in zip(mr, lr)] for mr, lr in zip(mean, low)]
    label = {dim: LABELS.get(dim, dim) for dim in (rows, columns)}
    index = [_axis_value(rows, v) for v in data[rows].values]
    cols = [_axis_value(columns, v) for v in data[columns].values]
    frame = pd.DataFrame(cells, index=pd.Index(index, name=label[rows]), columns=pd.Index(cols, name=label[columns]))
    display(HTML(f"<h4>{title}</h4><p style='font-size:90%'>Mean ± half-width of the 95% t confidence interval over "
                 f"{n} seeds.</p>{frame.to_html()}"))


def _axis_value(dim: str, value: Any) -> Any:
    if dim in PERCENT and isinstance(value, (float, np.floating)):
        return f"{100 * value:.4g}%"
    return value


def summary(quantities: dict[str, tuple[Any, str]], rows: str, columns: str, title: str, over: str = "seed"):
    """A titled table with a row per `rows` value and, per `columns` value, a column per named quantity: its mean
    over `over` in the quantity's format, ± the half-width of the 95% CI."""
    import pandas as pd
    from IPython.display import HTML, display

    cells: dict[tuple[Any, str], list[str]] = {}
    n = 0
    for column in quantities[next(iter(quantities))][0][columns].values:
        for name, (data, form) in quantities.items():
            chosen = data.sel({columns: column})
            mean, low, _, count = interval(chosen.transpose(rows, over), over)
            n = max(n, count)
            cells[(_axis_value(columns, column), name)] = [_cell(m, m - lo, form) for m, lo in zip(mean, low)]
    index = pd.Index(quantities[next(iter(quantities))][0][rows].values, name=LABELS.get(rows, rows))
    frame = pd.DataFrame(cells, index=index).rename_axis(columns=[LABELS.get(columns, columns), ""])
    display(HTML(f"<h4>{title}</h4><p style='font-size:90%'>Mean ± half-width of the 95% t confidence interval over "
                 f"{n} seeds.</p>{frame.to_html()}"))


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
    """What was run, on which data and model, for how long, over how many seeds, what the bands are, at which
    revision."""
    epochs = sorted({int(value) for value in np.asarray(dataset.epochs_per_cycle).ravel() if np.isfinite(value)})
    seeds = dataset.sizes.get("seed", 1)
    return (f"{what} Data: {dataset.attrs['dataset']}; model: {dataset.attrs['model']}; "
            f"{' or '.join(map(str, epochs))} epochs per cycle; {seeds} seed{'s' if seeds != 1 else ''}: {BAND} "
            f"(n = {seeds}); run {dataset.attrs['created']}, lotterylab git {dataset.attrs['git_revision'][:10]}.")


def collapsed_points(dataset, dims: list[str], names: dict[Any, str] | None = None) -> str:
    """A sentence listing the points (over `dims`) where some seed's mask collapsed a layer (`collapsed` from
    grids.collect), or saying that none did; figures draw them hollow. `names` gives coordinates their figure labels."""
    if "collapsed" not in dataset:
        return ""
    flags = dataset.collapsed.fillna(False).astype(bool)  # NaN: a combination not run
    flags = flags.any([dim for dim in flags.dims if dim not in dims]).transpose(*dims)
    def shown(dim: str, value: Any) -> str:
        if names and value in names:
            return names[value]
        return f"{LABELS.get(dim, dim).split(' (')[0].lower()} {_axis_value(dim, value)}"

    hits = [", ".join(shown(dim, flags[dim].values[i]) for dim, i in zip(dims, where))
            for where in np.argwhere(flags.values)]
    threshold = dataset.attrs.get("collapse_threshold", 0.01)
    if not hits:
        return f"No layer fell below {100 * threshold:g}% of its weights in any run."
    return (f"Layer collapse (a layer keeps less than {100 * threshold:g}% of its weights in some seed's mask; "
            f"drawn as hollow markers): {'; '.join(hits)}.")
