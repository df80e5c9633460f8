"""Dataset size against memory and time: decoding, the memory-mapped cache and training on 2,000 to 32,000 images.

Synthetic report-000 folders (`ferlab synth --format fer5 --size 256`: RGB (every 7th gray) PNG and JPEG faces of
sides 128-256, train/test x five classes), 32,000 written once; the smaller sets are hard links to their first
images. For each size, as `data=fer5` reads it (224x224 RGB):

- decode images/s with `data.decode_workers=1` (this process) and 2 (a pool of two), from a cold cache to a
  published one (scan, decode, write, flush to disk, check); best of 2 interleaved runs each, pending writes
  flushed before each (`os.sync`);
- the cache's size on disk (.npy images + .npz manifest);
- cached start-up: in a fresh process (torch and Lightning already imported), building the datamodule and
  running prepare_data + setup: the tree scanned, the cache checked and mapped, splits made and cleaned; median of 3;
- peak RSS of `ferlab train data=fer5 debug=limit` with the same 30 training and 10 validation / test batches at
  every size (what grows is the data, not the work): cold (its own decode with 2 workers, then training) and warm
  (the cache mapped). Peak RSS is `getrusage` of the child process tree (`os.wait4`: the largest process),
  which counts mapped cache pages too.

Targets: peak RSS at 32,000 within 1.25x of 2,000; decode with 2 processes >= 1.7x one; cached start-up flat
(at most 1 s at every size).

    .venv/bin/python -m benchmarks.data_scale [--quick]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import child_env, cli, compose_train, machine, table

SIZES, QUICK_SIZES = (2_000, 8_000, 32_000), (200, 800)
SIDE = 256
RSS_TARGET, DECODE_TARGET, STARTUP_TARGET_S = 1.25, 1.7, 1.0
STEPS, QUICK_STEPS = (30, 10), (3, 2)  # training batches, validation / test batches of every training run


def train_overrides(steps: tuple[int, int]) -> list[str]:
    """`ferlab train data=fer5 debug=limit` pinned to the same number of batches at every size."""
    train, evaluate = steps
    return ["data=fer5", "debug=limit", "trainer.max_epochs=1", f"trainer.limit_train_batches={train}",
            f"trainer.limit_val_batches={evaluate}", f"trainer.limit_test_batches={evaluate}",
            "trainer.num_sanity_val_steps=0", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]


STARTUP = """
import sys, time
from pathlib import Path
from hydra.utils import instantiate
from benchmarks.common import compose_train
import ferlab.data.datamodule  # torch and Lightning: their import time is not the data's
cfg = compose_train(Path(sys.argv[1]), ["data=fer5"], Path(sys.argv[1]) / "startup-run")
start = time.perf_counter()
dm = instantiate(cfg.data)
dm.prepare_data()
dm.setup("fit")
print(time.perf_counter() - start)
"""


def link_subset(full: Path, out: Path, n: int) -> Path:
    """`out` as a tree of hard links to the images of `full` whose index (`<folder>_<i>.<ext>`) is below n."""
    for path in full.rglob("*.*"):
        if int(path.stem.rsplit("_", 1)[1]) < n:
            target = out / path.relative_to(full)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    for folder in full.glob("*/*"):  # every class folder, as the writer makes them
        (out / folder.relative_to(full)).mkdir(parents=True, exist_ok=True)
    return out


def decode_rate(root: Path, workers: int) -> float:
    """Images/s of `data=fer5`'s source from nothing to a published cache entry (a throw-away cache folder)."""
    from hydra.utils import instantiate

    from ferlab.data.cache import load_or_build

    cfg = compose_train(root, ["data=fer5"], root / "decode-run")
    source, cache = instantiate(cfg.data.source), root / f"decode-cache-{workers}"
    os.sync()  # earlier writes flushed first: kernel writeback would take CPU from the timed decode
    start = time.perf_counter()
    n = len(load_or_build(source, cache, workers=workers).targets)
    rate = n / (time.perf_counter() - start)
    shutil.rmtree(cache)
    return rate


def best_decode_rates(root: Path, repeats: int) -> tuple[float, float]:
    """Best of `repeats` interleaved decodes with 1 and 2 processes (best: least disturbed by the machine)."""
    rates = [(decode_rate(root, 1), decode_rate(root, 2)) for _ in range(repeats)]
    return max(r[0] for r in rates), max(r[1] for r in rates)


def peak_rss(root: Path, overrides: list[str]) -> float:
    """Peak RSS (bytes) of `ferlab train <overrides>` in a fresh process, over its whole process tree."""
    log = root / "train.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ferlab", "train", *overrides], cwd=root, env=child_env(root),
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"ferlab train {' '.join(overrides)} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def startup_s(root: Path, repeats: int) -> float:
    """Median seconds for a fresh process to have `data=fer5` ready (cache checked and mapped, splits made)."""
    times = [float(subprocess.run([sys.executable, "-c", STARTUP, str(root)], cwd=root, env=child_env(root), check=True,
                                  capture_output=True, text=True).stdout.split()[-1]) for _ in range(repeats)]
    return statistics.median(times)


def measure(full: Path, work: Path, n: int, quick: bool) -> dict[str, float]:
    """Every figure of one dataset size."""
    root = work / str(n)
    link_subset(full, root / "data" / "fer5", n)
    train = train_overrides(QUICK_STEPS if quick else STEPS)
    row = {"n": n, "load": os.getloadavg()[0]}
    row["decode_1"], row["decode_2"] = best_decode_rates(root, 1 if quick else 2)
    row["rss_cold"] = peak_rss(root, [*train, "data.decode_workers=2"])  # decodes into root/.cache, then trains
    row["cache_bytes"] = sum(p.stat().st_size for p in (root / ".cache" / "ferlab").glob("*.np*"))
    row["startup_s"] = startup_s(root, 1 if quick else 3)
    row["rss_warm"] = peak_rss(root, train)
    shutil.rmtree(root)
    return row


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def to_markdown(rows: list[dict[str, float]], quick: bool) -> str:
    first, last, steps = rows[0], rows[-1], QUICK_STEPS if quick else STEPS
    body = [[f"{r['n']:,}", f"{r['decode_1']:,.0f}", f"{r['decode_2']:,.0f}", f"{r['decode_2'] / r['decode_1']:.2f}x",
             f"{r['cache_bytes'] / 1e9:.2f} GB", f"{r['startup_s']:.2f} s", f"{r['rss_cold'] / 1e9:.2f} GB",
             f"{r['rss_warm'] / 1e9:.2f} GB"] for r in rows]
    rss = max(last["rss_cold"] / first["rss_cold"], last["rss_warm"] / first["rss_warm"])
    decode = min(r["decode_2"] / r["decode_1"] for r in rows)
    startup = max(r["startup_s"] for r in rows)
    return "\n".join([
        f"### Dataset size: decode, cache, start-up and training memory{' (--quick)' if quick else ''}", "",
        f"Synthetic fer5 folders (largest side {SIDE}, PNG and JPEG), decoded to 224x224 RGB; decode rates: best "
        f"of {1 if quick else 2} interleaved runs. Machine: {machine()}; load average {rows[0]['load']:.1f} when it started (decoding with 2 processes needs 2 idle cores).",
        "", table(["images", "decode img/s, 1 process", "2 processes", "speed-up", "cache on disk",
                   "cached start-up", "peak RSS cold (decode + train)", "peak RSS warm (train)"], body,
                  right=range(1, 8)), "",
        f"Targets: peak RSS at {last['n']:,} within {RSS_TARGET}x of {first['n']:,}: {_verdict(rss <= RSS_TARGET)} "
        f"({rss:.2f}x); decode with 2 processes >= {DECODE_TARGET}x one: {_verdict(decode >= DECODE_TARGET)} "
        f"(lowest {decode:.2f}x); cached start-up flat, <= {STARTUP_TARGET_S:.0f} s: "
        f"{_verdict(startup <= STARTUP_TARGET_S)} ({first['startup_s']:.2f} s -> {last['startup_s']:.2f} s).",
        f"Training runs: `ferlab train data=fer5 debug=limit` with {steps[0]} training and {steps[1]} validation / "
        "test batches of 32 at every size; peak RSS is the largest process of the run's tree (`os.wait4`), mapped "
        "cache pages included.",
    ]) + "\n"


def main(quick: bool = False) -> str:
    """Write the largest set once, measure every size on hard-linked subsets, return the markdown."""
    from ferlab.data.writers import write_fer5_folders

    sizes = QUICK_SIZES if quick else SIZES
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-") as tmp:
        full = write_fer5_folders(Path(tmp) / "full", num_images=max(sizes), seed=0, size=SIDE)
        rows = [measure(full, Path(tmp), n, quick) for n in sizes]
    return to_markdown(rows, quick)


if __name__ == "__main__":
    cli("data_scale", main, __doc__.splitlines()[0])
