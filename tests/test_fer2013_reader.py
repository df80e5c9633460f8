"""The FER2013 CSV reader and the cache: split sizes, dtype, label mapping, clear errors, cache reuse."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from ferlab.data.cache import load_or_build
from ferlab.data.sources.fer2013 import Fer2013Csv
from ferlab.data.synthetic import SynthSpec, make_dataset, write_fer2013_csv
from ferlab.errors import FerlabError


@pytest.fixture
def csv_path(tmp_path):
    return write_fer2013_csv(tmp_path / "fer2013.csv", *make_dataset(SynthSpec(num_images=300, seed=2)))


def test_splits_dtype_and_labels(csv_path):
    data = Fer2013Csv(str(csv_path)).read()
    assert data.images.dtype == np.uint8 and data.images.shape == (300, 1, 48, 48)
    assert data.targets.dtype == np.int64
    assert data.split_sizes() == {"train": 240, "test_public": 30, "test_private": 30}  # the file's own splits
    lines = csv_path.read_text().splitlines()[1:]
    first = lines[0].split(",")
    assert data.targets[0] == int(first[0])
    assert data.images[0, 0, 0, :5].tolist() == [int(v) for v in first[1].split()[:5]]


def test_leading_spaces_in_headers_are_accepted(tmp_path, csv_path):
    text = csv_path.read_text().replace("emotion,pixels,Usage", "emotion, Usage, pixels", 1)
    # reorder columns to match the new header: icml_face_data.csv is `emotion, Usage, pixels`
    rows = [r.split(",") for r in text.splitlines()[1:]]
    icml = tmp_path / "icml_face_data.csv"
    icml.write_text("emotion, Usage, pixels\n" + "\n".join(f"{e},{u},{p}" for e, p, u in rows) + "\n")
    a, b = Fer2013Csv(str(csv_path)).read(), Fer2013Csv(str(icml)).read()
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.split, b.split)


def _corrupt(path, line_no: int, new_line: str):
    lines = path.read_text().splitlines()
    lines[line_no - 1] = new_line
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("3,1 2 3,Training", ":5: pixels has 3 values, expected 2304"),
        ("9," + " ".join(["0"] * 2304) + ",Training", ":5: label 9 outside 0-6"),
        ("x," + " ".join(["0"] * 2304) + ",Training", ":5: label 'x' is not an integer"),
        ("3," + " ".join(["0"] * 2304) + ",Validation", ":5: unknown Usage 'Validation'"),
        ("3," + " ".join(["300"] * 2304) + ",Training", ":5: pixel value 300 outside 0-255"),
    ],
)
def test_bad_rows_name_file_and_line(csv_path, line, expected):
    _corrupt(csv_path, 5, line)
    with pytest.raises(FerlabError) as e:
        Fer2013Csv(str(csv_path)).read()
    assert str(csv_path) in str(e.value) and expected in str(e.value)


def test_missing_columns_list_expected_and_found(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("label,pixels\n1,2\n")
    with pytest.raises(FerlabError, match=r"x.csv: missing column\(s\) \['emotion'\]; expected \['emotion', 'pixels'\] "
                                          r"\(and optionally \['Usage'\]\), found \['label', 'pixels'\]"):
        Fer2013Csv(str(p)).read()


def test_missing_file_names_path_and_source(tmp_path):
    with pytest.raises(FerlabError) as e:
        Fer2013Csv(str(tmp_path / "nope.csv")).read()
    assert "nope.csv" in str(e.value) and "Kaggle" in str(e.value)


def test_cache_is_reused_and_rebuilt_when_the_file_changes(tmp_path, csv_path, monkeypatch):
    cache = tmp_path / "cache"
    src = Fer2013Csv(str(csv_path))
    first = load_or_build(src, cache)
    files = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
    assert [p.suffix for p in files] == [".npy", ".npz"]  # images (memory-mapped) and the manifest
    mtimes = [p.stat().st_mtime_ns for p in files]
    monkeypatch.setattr(Fer2013Csv, "read", lambda self: pytest.fail("parsed again despite a valid cache"))
    second = load_or_build(src, cache)
    assert [p.stat().st_mtime_ns for p in files] == mtimes  # loaded, not rewritten
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    np.testing.assert_array_equal(first.images, second.images)
    monkeypatch.undo()
    _corrupt(csv_path, 2, "0," + " ".join(["7"] * 2304) + ",Training")
    os.utime(csv_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = load_or_build(src, cache)  # stale: the same cache entry, rebuilt in place
    assert (third.images[0] == 7).all()
    assert sorted(p for p in cache.iterdir() if not p.name.startswith(".")) == files


def test_first_parse_shows_a_progress_bar_in_a_terminal(tmp_path, csv_path, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats stderr as a terminal
    load_or_build(Fer2013Csv(str(csv_path)), tmp_path / "cache")
    assert "parsing fer2013.csv" in capsys.readouterr().err
    load_or_build(Fer2013Csv(str(csv_path)), tmp_path / "cache")
    assert "parsing" not in capsys.readouterr().err  # the cached load parses nothing


def test_train_csv_with_quoted_pixels_is_all_training(tmp_path, csv_path):
    from ferlab.data.writers import write_train_test_csvs

    images, labels, usage = make_dataset(SynthSpec(num_images=80, seed=2))
    train_csv, test_csv = write_train_test_csvs(tmp_path, images, labels, usage)
    assert '"' in train_csv.read_text().splitlines()[1]
    data = Fer2013Csv(str(train_csv)).read()
    assert data.split_sizes() == {"train": 64} and data.meta["layout"] == "train.csv"
    np.testing.assert_array_equal(data.images[:, 0], images[usage == "Training"])
    with pytest.raises(FerlabError, match=r"test.csv: no 'emotion' column \(found \['pixels'\]\): Kaggle's test.csv is "
                                          r"unlabelled and cannot be a test split"):
        Fer2013Csv(str(train_csv), test_csv_path=str(test_csv)).prepare()


def test_a_labelled_test_csv_becomes_the_test_split(tmp_path, csv_path):
    """With test=private and no official validation, such a pair validates with data.split=random."""
    from ferlab.data.writers import write_train_test_csvs

    images, labels, usage = make_dataset(SynthSpec(num_images=80, seed=2))
    train_csv, _ = write_train_test_csvs(tmp_path, images, labels, usage)
    src = Fer2013Csv(str(train_csv), test_csv_path=str(csv_path))
    src.prepare()
    data = src.finish(src.read())
    assert data.split_sizes() == {"train": 64, "test": 300}  # every row of the test CSV tests


@pytest.mark.parametrize("test, sizes, prefixes, val", [
    ("private", {"train": 240, "val": 30, "test": 30}, {"test": "test"}, "val"),
    ("both", {"train": 240, "test_public": 30, "test_private": 30},
     {"test_public": "test_public", "test_private": "test_private"}, "test_public"),
    ("merged", {"train": 240, "test": 60}, {"test": "test"}, None),
])
def test_what_publictest_and_privatetest_are_for(csv_path, test, sizes, prefixes, val):
    src = Fer2013Csv(str(csv_path), test=test)
    assert src.finish(src.read()).split_sizes() == sizes
    assert src.test_splits == prefixes and src.val_split == val


def test_unknown_test_choice_names_the_key():
    with pytest.raises(FerlabError, match=r"data.source.test: expected one of private, both, merged, got 'public'"):
        Fer2013Csv("x.csv", test="public")


@pytest.mark.parametrize("text, expected", [
    ("", r"x.csv: the file is empty"),
    ("emotion,pixels,Usage\n", r"x.csv: no data rows"),
    ("emotion,pixels,Usage\n3,1 2,Training,extra\n", r"x.csv:2: expected 3 fields, found 4"),
])
def test_empty_and_malformed_files(tmp_path, text, expected):
    p = tmp_path / "x.csv"
    p.write_text(text)
    with pytest.raises(FerlabError, match=expected):
        Fer2013Csv(str(p)).read()
