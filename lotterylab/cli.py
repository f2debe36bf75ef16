"""Command line: `lotterylab run CONFIG.yaml [--out DIR] [--set key.path=value ...]`, `sweep`, `analyze`, `study`,
`studies`."""

from __future__ import annotations

import argparse
import sys


EXECUTOR_HELP = "local, slurm, or a YAML file with an executor section (e.g. params/executors/slurm.yaml): use it"


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
    study = commands.add_parser("study", help="execute a study notebook with papermill and render its offline report")
    study.add_argument("name", help="study name; `lotterylab studies` lists them")
    study.add_argument("--params", help="params YAML file (default: params/NAME/<scale>.yaml)")
    study.add_argument("--scale", help="smoke, cpu, gpu or paper (default: cpu)")
    study.add_argument("--reports", default="reports", help="root of report directories (default: reports)")
    study.add_argument("--runs", default="runs", help="root of run directories (default: runs)")
    study.add_argument("--executor", metavar="NAME|FILE", help=EXECUTOR_HELP + " instead of the params' executor")
    commands.add_parser("studies", help="list the studies, one line each")
    sweep = commands.add_parser("sweep", help="a base config x grid axes, run by the executor the file names "
                                              "(local, or slurm through submitit)")
    sweep.add_argument("params", help="sweep YAML with sections base, axes and executor (see docs/scaling.md)")
    sweep.add_argument("--runs", default="runs", help="root of run directories (default: runs)")
    sweep.add_argument("--executor", metavar="NAME|FILE", help=EXECUTOR_HELP + " instead of the file's section")
    return parser


def _sweep(args: argparse.Namespace) -> int:
    from lotterylab import sweeps
    from lotterylab.checkpoint import CheckpointError
    from lotterylab.executors import JobFailed
    from lotterylab.masks import MaskError
    from lotterylab.train import DivergenceError

    try:
        run_dirs = sweeps.run(args.params, args.runs, args.executor)
    except (ValueError, MaskError, CheckpointError, DivergenceError, JobFailed) as error:  # ConfigError: ValueError
        print(f"lotterylab: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(str(run_dir) for run_dir in run_dirs))
    return 0


def _study(args: argparse.Namespace) -> int:
    from lotterylab import studies

    if args.command == "studies":
        for study in studies.STUDIES.values():
            print(f"{study.name:<18} {study.description}")
        return 0
    try:
        report = studies.run_study(args.name, args.params, args.scale, args.reports, args.runs, args.executor)
    except ValueError as error:  # StudyError and ConfigError are ValueErrors; a failed cell becomes a StudyError
        print(f"lotterylab: error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0


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
    if args.command in ("study", "studies"):
        return _study(args)
    if args.command == "sweep":
        return _sweep(args)
    from lotterylab import config, distributed
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
    if distributed.is_main():  # under torchrun, one line for the whole run
        print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
