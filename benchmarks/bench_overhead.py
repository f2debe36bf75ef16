"""Overhead of `lotterylab run` against a bare PyTorch loop doing the same steps, measured in one run.

Both sides are fresh processes (interpreter start and imports included), train the same dense MLP on the same
MNIST-1D tensors for the same epochs with the same per-step LR, and evaluate on the test set every epoch.
`lotterylab run` additionally checkpoints atomically every epoch and writes results.nc. Reported: median wall
time over repeats, interleaved, and the ratio to the bare loop.

    python benchmarks/bench_overhead.py [--epochs 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from lotterylab.core import config, data
from lotterylab.training import results

ROOT = Path(__file__).resolve().parent.parent

BARE_LOOP = textwrap.dedent("""
    import sys, numpy as np, torch, torch.nn.functional as F
    from torch import nn
    arrays = np.load(sys.argv[1])
    epochs, batch, lr0, warmup, save = int(sys.argv[2]), 128, 0.05, 2.0, sys.argv[3] != "-"
    x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    xt, yt = torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu"); nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    steps = (len(x) + batch - 1) // batch
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for step in range(steps):
            t = epoch + step / steps
            lr = lr0 * min(1.0, (t + 1 / steps) / warmup) * 0.1 ** sum(t >= m * epochs for m in (70 / 150, 130 / 150))
            for group in opt.param_groups:
                group["lr"] = lr
            idx = order[step * batch:(step + 1) * batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        if save:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, sys.argv[3])
    print(acc)
""")


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    mnist = data.load(config.DataConfig(name="mnist1d"), seed=0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        arrays = scratch / "mnist1d.npz"
        np.savez(arrays, x=mnist.train.x.numpy(), y=mnist.train.y.numpy(),
                 x_test=mnist.test.x.numpy(), y_test=mnist.test.y.numpy())
        script = scratch / "bare.py"
        script.write_text(BARE_LOOP)
        overrides = [f"schedule.epochs={args.epochs}", "train.progress=false"]
        commands = {
            "bare loop": [sys.executable, str(script), str(arrays), str(args.epochs), "-"],
            "bare loop + torch.save": [sys.executable, str(script), str(arrays), str(args.epochs),
                                       str(scratch / "bare.pt")],
        }
        times: dict[str, list[float]] = {name: [] for name in [*commands, "lotterylab run"]}
        for repeat in range(args.repeats):
            for name, command in commands.items():
                times[name].append(_timed(command))
            out = scratch / f"runs{repeat}"  # a fresh run directory: the run trains, it does not skip
            run = [sys.executable, "-m", "lotterylab.cli", "run", "params/runs/dense.yaml", "--out", str(out)]
            times["lotterylab run"].append(_timed(run + [item for o in overrides for item in ("--set", o)]))

    base = statistics.median(times["bare loop"])
    device = results.device_name(torch.device("cpu"))
    for name, samples in times.items():
        median = statistics.median(samples)
        print(json.dumps({"bench": "overhead", "device": device, "side": name, "epochs": args.epochs,
                          "repeats": args.repeats, "median_s": round(median, 3),
                          "ratio_to_bare": round(median / base, 3)}))

if __name__ == "__main__":
    main()
