"""Started by torchrun from test_distributed.py: train configs, saving every rank's masks and weights per stage.

`--kill stage,epoch,step` makes rank 0 SIGTERM torchrun (its parent) at that step, as a cluster's preemption would.
`--skew` gives rank 1 different mask seeds, so only rank 0's broadcast can make the ranks' masks agree.
"""

import argparse
import os
import signal
import time

import torch

from lotterylab.core import config, distributed
from lotterylab.training import methods, runs


class Recorder:
    """Each stage's mask after its prepare and weights after its last epoch, on this rank."""

    def __init__(self):
        self.stages: dict[int, dict[str, dict[str, torch.Tensor]]] = {}

    def on_epoch_end(self, trainer, stage, epoch, metrics):
        copy = {"mask": {k: m.cpu().clone() for k, m in trainer.mask.items()}}
        copy["model"] = {k: v.cpu().clone() for k, v in trainer.model.state_dict().items()}
        self.stages[stage] = copy


class KillLauncher:
    def __init__(self, at: tuple[int, int, int]):
        self.at = at

    def on_step(self, trainer, stage, epoch, step):
        if (stage, epoch, step) == self.at and distributed.is_main():
            os.kill(os.getppid(), signal.SIGTERM)
            time.sleep(120)  # torchrun terminates every worker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--record", help="directory for rank<R>-<config stem>.pt files")
    parser.add_argument("--kill", help="stage,epoch,step at which rank 0 SIGTERMs torchrun")
    parser.add_argument("--skew", action="store_true")
    args = parser.parse_args()
    if args.skew and int(os.environ["RANK"]) == 1:
        original = methods.stage_generator
        methods.stage_generator = lambda seed, purpose, stage: original(seed + 1, purpose, stage)
    for path in args.configs:
        recorder = Recorder()
        callbacks = [recorder] + ([KillLauncher(tuple(map(int, args.kill.split(","))))] if args.kill else [])
        runs.run(config.load(path), args.out, callbacks)
        if args.record:
            name = f"rank{distributed.rank()}-{os.path.splitext(os.path.basename(path))[0]}.pt"
            torch.save(recorder.stages, os.path.join(args.record, name))


if __name__ == "__main__":
    main()
