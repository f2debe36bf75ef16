"""The seed paper's Table 1 training setup (CIFAR-10), and the setup section of a study report: this scale's run
config beside Table 1, each difference marked, with the reasons its params file gives (`deviations`)."""

from __future__ import annotations

from typing import Any

TABLE1 = {  # arXiv 2406.02773, Table 1, CIFAR-10 column; docs/paper_settings.md gives every source
    "data": "cifar10",
    "model": "resnet20",
    "batch size": 512,
    "optimizer": "SGD",
    "learning rate": 0.1,
    "momentum": 0.9,
    "weight decay": 0.0001,
    "init": "kaiming_normal",
    "epochs per cycle": 150,
    "schedule": "step_warmup",
    "warmup (fraction of a cycle)": round(10 / 150, 4),
    "LR drops (fractions of a cycle)": [round(70 / 150, 4), round(130 / 150, 4)],
    "LR drop factor": 0.1,
}


def settings(base: dict[str, Any]) -> dict[str, Any]:
    """A study's run config (its `base` parameter, validated) in Table 1's terms."""
    from lotterylab.core import config

    cfg = config.from_dict(base, "base")
    return {
        "data": cfg.data.name,
        "model": cfg.model.name if cfg.model.width is None else f"{cfg.model.name}, width {cfg.model.width}",
        "batch size": cfg.data.batch_size,
        "optimizer": "SGD",
        "learning rate": cfg.optimizer.lr,
        "momentum": cfg.optimizer.momentum,
        "weight decay": cfg.optimizer.weight_decay,
        "init": cfg.model.init,
        "epochs per cycle": cfg.schedule.epochs,
        "schedule": cfg.schedule.name,
        "warmup (fraction of a cycle)": round(cfg.schedule.warmup_epochs / cfg.schedule.epochs, 4),
        "LR drops (fractions of a cycle)": [round(m, 4) for m in cfg.schedule.milestones],
        "LR drop factor": cfg.schedule.gamma,
    }


def differences(base: dict[str, Any]) -> list[str]:
    """The settings where this run config differs from Table 1."""
    ours = settings(base)
    return [name for name, value in TABLE1.items() if ours[name] != value]


def setup_html(parameters) -> str:
    """The report's setup section body: scale, seeds, the settings table and the listed deviations with reasons."""
    import html

    ours = settings(parameters.base)
    different = set(differences(parameters.base))
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(ours[name]))}</td>"
        f"<td>{html.escape(str(TABLE1[name]))}</td><td>{'differs' if name in different else 'same'}</td></tr>"
        for name in TABLE1)
    reasons = "".join(f"<li>{html.escape(reason)}</li>" for reason in parameters.deviations)
    unexplained = "" if parameters.deviations or not different else (
        "<p><strong>The params file gives no reason for these differences.</strong></p>")
    return (f"<p>Scale <code>{html.escape(parameters.label)}</code> ({html.escape(str(parameters.file.name))}); "
            f"seeds {html.escape(str(parameters.seeds))}.</p>"
            f"<table><tr><th>setting</th><th>this report</th><th>paper, Table 1 (CIFAR-10)</th><th></th></tr>"
            f"{rows}</table><p>Deviations from Table 1 and why:</p><ul>{reasons}</ul>{unexplained}")


def show_setup(parameters) -> None:
    from IPython.display import HTML, display

    display(HTML(setup_html(parameters)))
