"""ferlab init: write a starter project, your own config folder beside an installed ferlab.

DIR/README.md, DIR/conf/experiment/my_experiment.yaml (a ferlab recipe, changed where you say) and
DIR/conf/local/default.yaml (this machine's data paths). Runs started in DIR find conf/ on their own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ferlab.errors import FerlabError

EXPERIMENT = """\
# @package _global_
# Your experiment: ferlab's report001_resnet18_fer2013 recipe, changed where this file says so.
# `ferlab train --help` lists every recipe (experiment) and option; `--cfg job` shows what a run will use.
defaults:
  - report001_resnet18_fer2013   # the recipe this one starts from (any ferlab or own experiment)
  - _self_                       # then the lines below, which win over the recipe

task_name: my_experiment         # runs go to outputs/my_experiment/
trainer:
  max_epochs: 30
data:
  batch_size: 64                 # the recipe's is 63
"""

LOCAL = """\
# @package _global_
# This machine's data paths: fill them in. Every run started in this folder reads this file after the
# experiment (its values win over the experiment's; the command line wins over both). Keep it out of git.
paths:
  data_dir: ${paths.root_dir}/data   # your datasets: FER2013 as <data_dir>/fer2013/fer2013.csv, FER+ as
                                     # <data_dir>/ferplus/; synthetic faces are rendered here too
"""

README = """\
# My FER experiments (ferlab)
- `conf/experiment/my_experiment.yaml`: the recipe; add more experiments, `data/`, `model/` configs beside it.
- `conf/local/default.yaml`: where this machine keeps the data (FER2013 CSV); fill it in first.
- `ferlab train experiment=my_experiment debug=smoke` checks the setup; drop `debug=smoke` for the real run.
- Runs go to `outputs/`; `ferlab report outputs/my_experiment` tabulates them, `tensorboard --logdir outputs` plots them.
"""

FILES = {"README.md": README, "conf/experiment/my_experiment.yaml": EXPERIMENT, "conf/local/default.yaml": LOCAL}


def write_starter(folder: Path) -> list[Path]:
    """Write the starter files into `folder` (new or empty); never overwrites anything."""
    from ferlab.runs.io import atomic_write_text

    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FerlabError(f"{folder} is not an empty folder: ferlab init writes only into a new or empty one")
    written = []
    for name, text in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_text(path, text))
    return written


def next_steps(folder: Path) -> str:
    """The commands to run next, from the folder the user is in now."""
    cd = "" if folder.resolve() == Path.cwd().resolve() else f"  cd {folder}\n"
    return (f"next:\n{cd}"
            "  ferlab train experiment=my_experiment debug=smoke   # one short epoch on synthetic faces: checks the setup\n"
            "  ferlab train experiment=my_experiment               # the real run, once conf/local/default.yaml has your data")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferlab init", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("dir", nargs="?", default=".", type=Path, help="a new or empty folder (default: this one)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        written = write_starter(args.dir)
    except (FerlabError, OSError) as e:
        print(f"ferlab: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"ferlab: wrote a starter project in {args.dir}: " + ", ".join(p.relative_to(args.dir).as_posix() for p in written))
    print(next_steps(args.dir))
