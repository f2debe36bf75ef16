"""`lotterylab analyze lmc|sharpness|signs RUN_DIR`: run one analysis, write RUN_DIR/analysis/<name>.nc, summarize."""

from __future__ import annotations

import argparse
from pathlib import Path


def _pair(text: str) -> tuple[int, int]:
    first, sep, second = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(first), int(second)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected two stage numbers A:B") from None


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `analyze` and its three analyses on the CLI's subcommands."""
    analyze = commands.add_parser("analyze", help="analyse a finished run; writes RUN_DIR/analysis/<name>.nc")
    kinds = analyze.add_subparsers(dest="analysis", required=True)
    lmc = kinds.add_parser("lmc", help="linear mode connectivity between stage-end checkpoints")
    lmc.add_argument("--bn-batches", type=int, default=10, help="batches to recompute BatchNorm stats (0: off)")
    sharpness = kinds.add_parser("sharpness", help="top Hessian eigenvalue at stage-end checkpoints")
    sharpness.add_argument("--stage", dest="stages", type=int, action="append",
                           help="stage to analyse, negative counts from the last (repeatable; default -1)")
    sharpness.add_argument("--batches", type=int, default=8, help="training batches in the fixed subset")
    sharpness.add_argument("--batch-size", type=int, default=256, help="size of those batches")
    sharpness.add_argument("--max-iter", type=int, default=100, help="power iterations at most")
    sharpness.add_argument("--tol", type=float, default=1e-4, help="stop when the estimate moves less (relative)")
    sharpness.add_argument("--trace-samples", type=int, default=0, help="Hutchinson trace samples (0: no trace)")
    signs = kinds.add_parser("signs", help="sign flips and mask overlap between stages, or against a reference run")
    signs.add_argument("--reference", help="reference run directory: sign and mask overlap of the last stages")
    for parser in (lmc, sharpness, signs):
        parser.add_argument("run_dir", help="a finished run directory, as printed by `lotterylab run`")
        parser.add_argument("--device", help="device to analyse on (default: the run's train.device)")
    for parser in (lmc, signs):
        parser.add_argument("--pair", dest="pairs", type=_pair, action="append",
                            help="stages A:B to compare (repeatable; default: every consecutive pair)")


def _lmc(args: argparse.Namespace, run: Path):
    from lotterylab.analysis import lmc

    dataset = lmc.between_stages(run, args.pairs, bn_batches=args.bn_batches, device=args.device)
    for index in dataset.pair.values:
        pair = dataset.sel(pair=index)
        print(f"stages {int(pair.stage_a)}->{int(pair.stage_b)}: train barrier {float(pair.train_barrier):.4f}, "
              f"test barrier {float(pair.test_barrier):.4f}")
    return "lmc", dataset


def _sharpness(args: argparse.Namespace, run: Path):
    import xarray as xr

    from lotterylab.analysis import sharpness

    per_stage = [sharpness.top_eigenvalue(run, stage, args.batches, args.batch_size, args.tol, args.max_iter,
                                          trace_samples=args.trace_samples, device=args.device)
                 for stage in args.stages or [-1]]
    dataset = xr.concat(per_stage, dim="stage", combine_attrs="override")
    for stage in dataset.stage.values:
        point = dataset.sel(stage=stage)
        print(f"stage {int(stage)}: top eigenvalue {float(point.eigenvalue):.4g} "
              f"({int(point.iterations)} iterations, converged {bool(point.converged)})")
    return "sharpness", dataset


def _signs(args: argparse.Namespace, run: Path):
    from lotterylab.analysis import signs
    from lotterylab.analysis.loading import AnalysisError

    if args.reference is not None:
        if args.pairs:
            raise AnalysisError("--pair: not used with --reference (the last stages are compared)")
        dataset = signs.against_reference(run, args.reference, device=args.device)
        print(f"sign overlap {float(dataset.global_overlap):.4f}, mask jaccard {float(dataset.global_jaccard):.4f}"
              f" with {args.reference}")
        return f"signs-reference-{dataset.attrs['reference_run_hash']}", dataset
    dataset = signs.between_stages(run, args.pairs, device=args.device)
    for index in dataset.pair.values:
        pair = dataset.sel(pair=index)
        print(f"stages {int(pair.stage_a)}->{int(pair.stage_b)}: sign flips {float(pair.global_flips):.4f}, "
              f"mask jaccard {float(pair.global_jaccard):.4f}")
    return "signs", dataset


ANALYSES = {"lmc": _lmc, "sharpness": _sharpness, "signs": _signs}


def main(args: argparse.Namespace) -> Path:
    """Run the chosen analysis and write its Dataset; errors are ValueErrors with one line."""
    from lotterylab.analysis import loading
    from lotterylab.core import paths

    run = Path(args.run_dir)
    if not run.is_dir():
        raise loading.AnalysisError(f"{run}: no such run directory")
    name, dataset = ANALYSES[args.analysis](args, run)
    return loading.write(dataset, paths.analysis(run, name))
