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
    assert data.split_sizes() == {"train": 240, "val": 30, "test": 30}
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
    with pytest.raises(FerlabError, match=r"missing column\(s\) \['emotion', 'Usage'\]"):
        Fer2013Csv(str(p)).read()


def test_missing_file_names_path_and_source(tmp_path):
    with pytest.raises(FerlabError) as e:
        Fer2013Csv(str(tmp_path / "nope.csv")).read()
    assert "nope.csv" in str(e.value) and "Kaggle" in str(e.value)


def test_cache_is_reused_and_rebuilt_when_the_file_changes(tmp_path, csv_path):
    cache = tmp_path / "cache"
    src = Fer2013Csv(str(csv_path))
    first = load_or_build(src, cache)
    files = list(cache.iterdir())
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    second = load_or_build(src, cache)
    assert files[0].stat().st_mtime_ns == mtime  # loaded, not rewritten
    np.testing.assert_array_equal(first.images, second.images)
    _corrupt(csv_path, 2, "0," + " ".join(["7"] * 2304) + ",Training")
    os.utime(csv_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = load_or_build(src, cache)
    assert (third.images[0] == 7).all() and len(list(cache.iterdir())) == 2


def test_corrupt_cache_is_rebuilt(tmp_path, csv_path):
    cache = tmp_path / "cache"
    src = Fer2013Csv(str(csv_path))
    good = load_or_build(src, cache)
    (path,) = cache.iterdir()
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    again = load_or_build(src, cache)
    np.testing.assert_array_equal(good.images, again.images)
    assert path.stat().st_size > 1000
