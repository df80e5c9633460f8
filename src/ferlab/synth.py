"""`ferlab synth`: write a synthetic face dataset in FER2013's own CSV format, anywhere."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ferlab.errors import FerlabError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferlab synth", description=__doc__.split("\n")[0].split(": ", 1)[1])
    p.add_argument("out", type=Path, help="output file (fer2013 format: a .csv path)")
    p.add_argument("--num-images", type=int, default=10000, help="faces to render (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument("--difficulty", type=float, default=0.5, help="0 easy .. 1 hard (default 0.5)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="PublicTest share (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="PrivateTest share (default 0.1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    return p


def run_synth(args: argparse.Namespace) -> Path:
    """Render and write; refuses to replace an existing file unless --overwrite."""
    from ferlab.data.synthetic import SynthSpec, make_dataset, write_fer2013_csv

    if args.out.exists() and not args.overwrite:
        raise FerlabError(f"{args.out} exists; pass --overwrite to replace it")
    if args.num_images < 1 or not 0 <= args.difficulty <= 1:
        raise FerlabError("--num-images must be >= 1 and --difficulty in [0, 1]")
    spec = SynthSpec(args.num_images, args.seed, args.difficulty, args.val_fraction, args.test_fraction)
    return write_fer2013_csv(args.out, *make_dataset(spec))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = run_synth(args)
    except FerlabError as e:
        print(f"ferlab: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.num_images} faces to {path}")
