"""`ferlab synth`: write synthetic faces in any official dataset layout (FER2013 CSV by default), anywhere."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from ferlab.errors import FerlabError

# formats written as one .csv file (its name inside the folder of `--format all`); the others write a folder
FILES = {"fer2013": "fer2013.csv", "icml": "icml_face_data.csv"}
# format -> what gets written
FORMATS: dict[str, str] = {
    "fer2013": "Kaggle's fer2013.csv (emotion,pixels,Usage)",
    "icml": "icml_face_data.csv (`emotion, Usage, pixels`: headers with leading spaces)",
    "train_test": "train.csv (emotion,pixels) + test.csv (pixels only, unlabelled)",
    "ferplus": "fer2013.csv + fer2013new.csv (FER+ votes, row-aligned; some non-face rows)",
    "ferplus_folders": "FER2013Train/Valid/Test with label.csv vote files and PNGs",
    "fer2013_folders": "train/<class>/*.png and test/<class>/*.png, seven lowercase classes",
    "fer5": "report 000's train|test/{Angry,Happy,Neutral,Sad,Surprise}/*, RGB, varying size",
    "rafdb": "RAF-DB's basic/EmoLabel/list_patition_label.txt + basic/Image/{aligned,original}/",
    "rafdb_folders": "RAF-DB re-upload: DATASET/{train,test}/{1..7}/*.jpg + {train,test}_labels.csv",
    "affectnet": "AffectNet's Manually_Annotated_file_lists/{training,validation}.csv + photos with face boxes "
                 "(validation.csv without header; ids 8-10, boxes off the edge, a negative width; "
                 "valence/arousal, -2 where not annotated)",
    "affectnet2021": "AffectNet 2021: {train_set,val_set}/images/<n>.jpg + annotations/<n>_{exp,val,aro,lnd}.npy",
    "all": "every format above, one sub-folder each",
}


def build_parser() -> argparse.ArgumentParser:
    formats = "\n".join(f"  {k:<16} {what} (out: {'a .csv file' if k in FILES else 'a folder'})"
                        for k, what in FORMATS.items())
    p = argparse.ArgumentParser(prog="ferlab synth", description=__doc__.split(": ", 1)[1],
                                epilog=f"formats:\n{formats}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help=f"output .csv file ({', '.join(FILES)}) or folder (other formats)")
    p.add_argument("--format", choices=list(FORMATS), default="fer2013", help="dataset layout (default fer2013)")
    p.add_argument("--num-images", type=int, default=10000, help="faces to render (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument("--difficulty", type=float, default=0.5, help="0 easy .. 1 hard (default 0.5)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="PublicTest share (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="PrivateTest share (fer5, rafdb: test share; affectnet: validation list share)")
    p.add_argument("--size", type=int, default=96,
                   help="fer5: largest image side, sides vary down to half; rafdb, affectnet: face side (default 96)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file or folder")
    return p


def _spec(args: argparse.Namespace) -> tuple:
    return args.num_images, args.seed, args.difficulty, args.val_fraction, args.test_fraction


@functools.cache
def _render(spec: tuple, cover: bool = True):
    """(images, labels, usage), rendered once per setting: `--format all` writes the same faces in every layout."""
    from ferlab.data.synthetic import SynthSpec, make_dataset

    return make_dataset(SynthSpec(*spec), cover_classes=cover)


@functools.cache
def _votes(spec: tuple):
    """FER+ vote counts and image names for the rendered faces (both FER+ layouts share them)."""
    from ferlab.data.writers import ferplus_votes

    return ferplus_votes(_render(spec)[1], seed=spec[1])


def _ferplus(out: Path, args: argparse.Namespace) -> None:
    from ferlab.data.synthetic import write_fer2013_csv
    from ferlab.data.writers import write_ferplus_csv

    images, labels, usage = _render(_spec(args))
    votes, names = _votes(_spec(args))
    write_fer2013_csv(out / "fer2013.csv", images, labels, usage)
    write_ferplus_csv(out / "fer2013new.csv", votes, usage, names)


def _ferplus_folders(out: Path, args: argparse.Namespace) -> None:
    from ferlab.data.writers import write_ferplus_folders

    images, labels, usage = _render(_spec(args))
    votes, names = _votes(_spec(args))
    write_ferplus_folders(out, images, votes, usage, names)


def _writers() -> dict[str, Callable[[Path, argparse.Namespace], object]]:
    from ferlab.data import writers as w
    from ferlab.data.synthetic import write_fer2013_csv

    return {
        "fer2013": lambda out, a: write_fer2013_csv(out, *_render(_spec(a), cover=False)),
        "icml": lambda out, a: w.write_icml_csv(out, *_render(_spec(a))),
        "train_test": lambda out, a: w.write_train_test_csvs(out, *_render(_spec(a))),
        "ferplus": _ferplus,
        "ferplus_folders": _ferplus_folders,
        "fer2013_folders": lambda out, a: w.write_fer2013_folders(out, *_render(_spec(a))),
        "fer5": lambda out, a: w.write_fer5_folders(out, a.num_images, a.seed, a.size, a.test_fraction),
        **{name: functools.partial(_wild, name) for name in ("rafdb", "rafdb_folders", "affectnet", "affectnet2021")},
    }


def _wild(name: str, out: Path, args: argparse.Namespace) -> Path:
    """RAF-DB and AffectNet layouts: their own class frequencies, `--size` faces, `--test-fraction` held out."""
    from ferlab.data import writers_wild

    write = getattr(writers_wild, f"write_{name}")
    return write(out, args.num_images, args.seed, args.difficulty, args.size, args.test_fraction)


def run_synth(args: argparse.Namespace) -> Path:
    """Render and write; refuses to replace an existing file or folder unless --overwrite."""
    if args.out.exists() and not args.overwrite:
        raise FerlabError(f"{args.out} exists; pass --overwrite to replace it")
    if args.num_images < 1 or not 0 <= args.difficulty <= 1:
        raise FerlabError("--num-images must be >= 1 and --difficulty in [0, 1]")
    if not (0 <= args.val_fraction < 1 and 0 <= args.test_fraction < 1 and args.val_fraction + args.test_fraction < 1):
        raise FerlabError("--val-fraction and --test-fraction must be in [0, 1) and leave some Training rows")
    writers = _writers()
    names = [f for f in FORMATS if f != "all"] if args.format == "all" else [args.format]
    for name in names:
        out = args.out / name if args.format == "all" else args.out
        if args.format == "all" and name in FILES:
            out = out / FILES[name]
        writers[name](out, args)
    return args.out


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = run_synth(args)
    except FerlabError as e:
        print(f"ferlab: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.num_images} faces ({args.format}) to {path}")
