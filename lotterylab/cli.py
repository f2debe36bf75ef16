"""Command line: `lotterylab run CONFIG.yaml [--out DIR] [--set key.path=value ...]` and `lotterylab analyze ...`."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lotterylab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train one run (idempotent; resumes an interrupted run)")
    run.add_argument("config", help="YAML config file, e.g. params/runs/cyclic.yaml")
    run.add_argument("--out", default="runs", help="root directory of run directories (default: runs)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set schedule.epochs=5 (repeatable)")
    from lotterylab import analyze

    analyze.add_parser(commands)
    return parser


def _analyze(args: argparse.Namespace) -> int:
    from lotterylab import analyze
    from lotterylab.checkpoint import CheckpointError

    try:
        path = analyze.main(args)
    except (ValueError, CheckpointError) as error:  # AnalysisError and ConfigError are ValueErrors
        print(f"lotterylab: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "analyze":
        return _analyze(args)
    from lotterylab import config
    from lotterylab.checkpoint import CheckpointError
    from lotterylab.masks import MaskError
    from lotterylab.train import DivergenceError

    try:
        cfg = config.load(args.config, args.overrides)
        from lotterylab import runs

        run_dir = runs.run(cfg, args.out)
    except (ValueError, MaskError, CheckpointError, DivergenceError) as error:  # ConfigError is a ValueError
        print(f"lotterylab: error: {error}", file=sys.stderr)
        return 2
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
