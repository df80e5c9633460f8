"""The memory-mapped cache: a second run maps instead of decoding, damaged entries are rebuilt, parallel decode
gives the bytes of one process, and training on a large cache keeps its resident memory far below the cache."""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferlab.data import cache as cache_mod
from ferlab.data import images as images_mod
from ferlab.data.cache import cache_entry, load_or_build
from ferlab.data.datamodule import FERDataModule
from ferlab.data.imageset import ImageSet
from ferlab.data.sources.fer2013 import Fer2013Csv
from ferlab.data.sources.folders import ImageFolders
from ferlab.data.store import read_npy_header, staging
from ferlab.data.synthetic import SynthSpec, make_dataset, write_fer2013_csv
from ferlab.data.writers import write_fer5_folders
from ferlab.errors import FerlabError
from ferlab.labels import FER5


@pytest.fixture(scope="module")
def fer5_dir(tmp_path_factory):
    root = write_fer5_folders(tmp_path_factory.mktemp("f5") / "fer5", num_images=60, seed=3, size=64)
    (root / "train" / "Sad" / "junk.png").write_bytes(b"not an image")
    return root


def _calls(monkeypatch, owner, name: str) -> list:
    """Record every call of owner.name (still calling through)."""
    seen, real = [], getattr(owner, name)

    def spy(*args, **kwargs):
        seen.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return seen


def test_a_second_run_maps_the_cache_and_decodes_nothing(fer5_dir, tmp_path, monkeypatch):
    def module() -> FERDataModule:
        src = ImageFolders(str(fer5_dir), FER5, image_size=32, channels=3, on_bad_sample="skip")
        return FERDataModule(src, name="fer5", num_classes=5, class_names=FER5, in_chans=3, image_size=32,
                             split="random", val_fraction=0.2, cache_dir=str(tmp_path / "cache"), decode_workers=2)

    walks, checks = _calls(monkeypatch, ImageFolders, "_walk"), _calls(monkeypatch, cache_mod, "_open_images")
    cold = module()
    cold.prepare_data()
    cold.setup("fit")
    assert len(walks) == 1 and len(checks) == 1  # one scan of the tree, one check (right after writing)
    monkeypatch.setattr(images_mod, "decode_image", lambda *a, **k: pytest.fail("decoded despite a valid cache"))
    warm = module()
    warm.prepare_data()
    warm.setup("fit")
    warm.prepare_data()  # Lightning calls it again before testing: nothing more to check
    assert len(walks) == 2 and len(checks) == 2  # the warm run: one scan, one check
    images = warm.splits["train"][0]
    assert isinstance(images, ImageSet) and isinstance(images.array, np.memmap) and images.array.mode == "r"
    np.testing.assert_array_equal(images[:].numpy(), cold.splits["train"][0][:].numpy())
    assert len(pickle.dumps(warm.train_dataloader().dataset)) < 20_000  # workers get the file's path, not pixels


def _damage(entry, how: str) -> None:
    npy, npz = entry.images, entry.manifest
    if how == "truncated .npy":
        with open(npy, "r+b") as f:
            f.truncate(npy.stat().st_size - 100)
    elif how == "edited .npy":
        raw = bytearray(npy.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        npy.write_bytes(bytes(raw))
    elif how == "edited .npy, mtime restored":  # caught by the sampled digests (row 0 is always sampled)
        st, offset = npy.stat(), read_npy_header(npy)[2]
        with open(npy, "r+b") as f:
            f.seek(offset + 5)
            byte = f.read(1)
            f.seek(offset + 5)
            f.write(bytes([byte[0] ^ 0xFF]))
        os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif how == "missing .npy":
        npy.unlink()
    elif how == "garbage manifest":
        npz.write_bytes(b"not a zip at all")
    elif how == "edited manifest":
        raw = bytearray(npz.read_bytes())
        raw[len(raw) // 3] ^= 0xFF
        npz.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["truncated .npy", "edited .npy", "edited .npy, mtime restored", "missing .npy",
                                 "garbage manifest", "edited manifest"])
def test_a_damaged_cache_is_rebuilt_never_trusted(tmp_path, how, monkeypatch):
    csv = write_fer2013_csv(tmp_path / "fer2013.csv", *make_dataset(SynthSpec(num_images=300, seed=4)))
    src, folder = Fer2013Csv(str(csv)), tmp_path / "cache"
    good = load_or_build(src, folder)
    expected, entry = np.array(good.images), cache_entry(src, folder)  # a copy: `good` maps the file damaged next
    _damage(entry, how)
    reads = _calls(monkeypatch, Fer2013Csv, "read")
    again = load_or_build(src, folder)
    assert len(reads) == 1  # rebuilt
    np.testing.assert_array_equal(expected, again.images)
    np.testing.assert_array_equal(good.digests, again.digests)
    assert sorted(p.name for p in folder.iterdir()) == sorted([entry.images.name, entry.manifest.name, entry.lock.name])
    assert load_or_build(src, folder) is not None and len(reads) == 1  # and trusted again


def test_an_entry_of_the_old_single_npz_format_is_rebuilt_and_removed(tmp_path):
    csv = write_fer2013_csv(tmp_path / "fer2013.csv", *make_dataset(SynthSpec(num_images=100, seed=6)))
    src, folder = Fer2013Csv(str(csv)), tmp_path / "cache"
    old = folder / f"fer2013csv-{cache_mod.cache_slot(src, src.files(), version=2)}.npz"
    folder.mkdir()
    np.savez(old, images=np.zeros((100, 1, 48, 48), np.uint8), header=np.frombuffer(b"{}", np.uint8))
    data = load_or_build(src, folder)
    assert isinstance(data.images, np.memmap) and data.images.shape == (100, 1, 48, 48) and data.images.any()
    assert not old.exists()


def test_two_runs_at_once_decode_once_and_a_killed_build_leaves_nothing(tmp_path, monkeypatch):
    csv = write_fer2013_csv(tmp_path / "fer2013.csv", *make_dataset(SynthSpec(num_images=300, seed=5)))
    folder, entry = tmp_path / "cache", cache_entry(Fer2013Csv(str(csv)), tmp_path / "cache")
    folder.mkdir()
    (folder / f".{entry.stem}.k1ll3d.npy").write_bytes(b"half an image file")  # staged by a killed build
    real, reads = Fer2013Csv.read, []

    def slow_read(self):
        reads.append(self)
        time.sleep(0.5)  # the second run arrives while the first is decoding
        return real(self)

    monkeypatch.setattr(Fer2013Csv, "read", slow_read)
    results = []
    runs = [threading.Thread(target=lambda: results.append(load_or_build(Fer2013Csv(str(csv)), folder)))
            for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert len(reads) == 1 and len(results) == 2  # the second run waited for the first, then mapped its entry
    np.testing.assert_array_equal(results[0].images, results[1].images)
    assert sorted(p.name for p in folder.iterdir()) == sorted([entry.images.name, entry.manifest.name, entry.lock.name])


def test_parallel_decode_gives_the_same_bytes_as_one_process(fer5_dir, tmp_path, monkeypatch):
    pools = _calls(monkeypatch, images_mod.multiprocessing, "get_context")
    out = {}
    for workers in (1, 2):
        with staging(tmp_path, workers) as build:
            data = ImageFolders(str(fer5_dir), FER5, image_size=24, channels=3, on_bad_sample="skip").read()
            staged = build.staged[str(data.images.filename)]
            out[workers] = (np.array(data.images), data.targets, data.meta["bad_samples"], staged.digests.copy(),
                            staged.std.copy())
        assert len(pools) == workers - 1  # one process, then a pool of two
    one, two = out[1], out[2]
    assert one[2]["count"] == 1 and "junk.png" in one[2]["first"][0]  # the bad file is left out in both
    for a, b in zip(one, two, strict=True):
        assert a == b if isinstance(a, dict) else np.array_equal(a, b)
    assert one[0].shape == (60, 3, 24, 24)


def test_face_boxes_are_clamped_and_cropped_before_resizing(tmp_path):
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[10:30, 40:60] = 200  # a bright "face" at x 40-60, y 10-30
    Image.fromarray(pixels).save(tmp_path / "a.png")
    paths = [tmp_path / "a.png"] * 3
    boxes = np.array([[40, 10, 20, 20], [40, 10, 50, 20], [0, 0, 60, 40]])  # the face; past the edge; everything
    decoded = images_mod.decode_images(paths, 8, 1, boxes=boxes)
    face, clamped, whole = (decoded.images[i].astype(float) for i in range(3))
    assert np.array_equal(face, clamped)  # a box past the image's edge is clamped to it
    assert face.mean() > 150 and whole.mean() < 60  # the face fills the crop; it is a sixth of the whole image
    with pytest.raises(FerlabError, match=r"a.png: cannot use this image \(face box .* lies outside the 60x40 image"):
        images_mod.decode_images(paths[:1], 8, 1, boxes=np.array([[70, 0, 10, 10]]))


def _memory_run(root: str, cache: str, out: str) -> None:
    """In a process of its own: peak RSS after the same images and steps from a 2 MB cache, then from a 300 MB one,
    written to `out` as JSON (what the process prints goes to `out`.log)."""
    import resource

    import torch

    from ferlab.config.runner import compose_run
    from ferlab.tasks.train import run_train
    from tests.conftest import output_to

    output_to(f"{out}.log")
    torch.set_num_threads(1)  # one thread: a busy machine does not slow it down
    peaks = []
    for size in (16, 224):
        cfg = compose_run("train", [f"paths.root_dir={root}", "data=fer5", f"data.source.root={root}/fer5",
                          f"paths.cache_dir={cache}", f"data.source.image_size={size}", "data.image_size=16",
                          "data.batch_size=16", "data.eval_batch_size=16", "model.width=8", "augment=none",
                          "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "trainer.limit_train_batches=60",
                          "trainer.limit_val_batches=2", "test=false", "logger=none", "callbacks.rich_progress_bar=null",
                          "callbacks.rich_model_summary=null"], f"{root}/run{size}")
        run_train(cfg)
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    Path(out).write_text(json.dumps(peaks))


def test_training_on_a_large_cache_keeps_resident_memory_far_below_its_size(tmp_path):
    """Peak RSS of 60 steps (960 random images, more than half the set) over a 300 MB cache minus that of the same
    steps over a 2 MB one: without the mapping (and its release) it would be the whole cache, twice. The runs are
    a process of their own, forked from the suite's preloaded server (torch and Lightning imported already)."""
    from tests.conftest import forkserver

    root, rng = tmp_path, np.random.default_rng(0)
    for i in range(2000):
        folder = root / "fer5" / ("test" if (i // 5) % 10 == 0 else "train") / FER5[i % 5]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    for size in (16, 224):
        load_or_build(ImageFolders(str(root / "fer5"), FER5, image_size=size, channels=3), root / "cache")
    big = max(root.joinpath("cache").glob("*.npy"), key=lambda p: p.stat().st_size).stat().st_size
    assert big > 300e6
    out = root / "peaks.json"
    proc = forkserver().Process(target=_memory_run, args=(str(root), str(root / "cache"), str(out)))
    proc.start()
    proc.join(300)
    assert proc.exitcode == 0 and out.exists(), Path(f"{out}.log").read_text()[-3000:]
    small_peak, big_peak = json.loads(out.read_text())
    assert big_peak - small_peak < 0.3 * big, (small_peak / 1e6, big_peak / 1e6, big / 1e6)


def test_too_little_space_to_stage_is_the_disk_full_error(tmp_path, monkeypatch):
    """The free-space check before staging raises what a full disk raises (DiskFull), naming the folder."""
    import shutil as shutil_mod
    from collections import namedtuple

    from ferlab.data import store
    from ferlab.errors import DiskFull

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_mod, "disk_usage", lambda _: usage(1 << 30, 1 << 30, 100))
    with staging(tmp_path), pytest.raises(DiskFull, match=f"{tmp_path}: no space for the decoded images"):
        store.stage((4, 1, 48, 48))
    assert not list(tmp_path.iterdir())  # nothing staged


def test_rebuilding_a_stored_data_config_stats_each_file_once(tmp_path, monkeypatch):
    """build_stored_datamodule trusts the reader's own check of its files; a missing one is still one line."""
    from ferlab.data.rebuild import DATAMODULE, build_stored_datamodule
    from ferlab.errors import DataNotFound
    from ferlab.labels import FER2013

    csv = tmp_path / "fer2013.csv"
    write_fer2013_csv(csv, *make_dataset(SynthSpec(num_images=20)))
    data = {"_target_": DATAMODULE, "source": {"_target_": "ferlab.data.sources.fer2013.Fer2013Csv",
                                               "csv_path": str(csv)},
            "name": "fer2013", "num_classes": 7, "class_names": list(FER2013), "in_chans": 1, "image_size": 48}
    stats, stat = [], Path.stat
    monkeypatch.setattr(Path, "stat", lambda self, **kw: (stats.append(self), stat(self, **kw))[1])
    build_stored_datamodule(data, "best.ckpt", cache_dir=None)
    assert stats.count(csv) == 1
    csv.unlink()
    with pytest.raises(DataNotFound, match=r"^best.ckpt: the data it was trained on is not on this machine \(FER2013"):
        build_stored_datamodule(data, "best.ckpt", cache_dir=None)


def test_a_full_disk_leaves_no_lock_file(tmp_path, monkeypatch):
    """A build that fails on a full disk removes the lock file it created; one that cannot create it is one line."""
    import errno
    import shutil as shutil_mod
    from collections import namedtuple

    from ferlab.errors import DiskFull

    csv, cache = tmp_path / "fer2013.csv", tmp_path / "cache"
    write_fer2013_csv(csv, *make_dataset(SynthSpec(num_images=20)))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_mod, "disk_usage", lambda _: usage(1 << 30, 1 << 30, 100))
    with pytest.raises(DiskFull):
        load_or_build(Fer2013Csv(str(csv)), cache)
    assert list(cache.iterdir()) == []

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod, "open", full, raising=False)
    with pytest.raises(DiskFull, match=r"^no space left on device creating the cache lock .*\.lock$"):
        load_or_build(Fer2013Csv(str(csv)), cache)
    assert list(cache.iterdir()) == []
