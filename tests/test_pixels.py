"""FER2013 pixel strings: vectorized parse and format, with the first bad row named."""

from __future__ import annotations

import numpy as np
import pytest

from ferlab.data.pixels import PixelError, format_pixel_rows, parse_pixel_strings


def test_round_trip_matches_python_formatting():
    a = np.random.default_rng(0).integers(0, 256, (50, 2304)).astype(np.uint8)
    a[0, :3] = [0, 255, 9]
    rows = format_pixel_rows(a)
    assert rows[0] == " ".join(map(str, a[0]))
    assert rows[-1] == " ".join(map(str, a[-1]))
    np.testing.assert_array_equal(parse_pixel_strings(rows, 2304), a)


def test_tolerates_extra_whitespace():
    np.testing.assert_array_equal(parse_pixel_strings([" 1  2 3 "], 3), [[1, 2, 3]])


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("1 2", "has 2 values, expected 3"),
        ("1 2 3 4", "has 4 values, expected 3"),
        ("1 x 3", "'x' is not an integer"),
        ("1 -2 3", "'-2' is not an integer"),
        ("1 2.5 3", "'2.5' is not an integer"),
        ("1 2 256", "256 outside 0-255"),
        ("1 2 1000", "1000 outside 0-255"),
        ("1 2 \u00e9", "non-ASCII"),
    ],
)
def test_bad_row_is_named(bad, reason):
    rows = ["4 5 6"] * 3000 + [bad] + ["7 8 9"]  # past the first chunk, so offsets are exercised
    with pytest.raises(PixelError) as e:
        parse_pixel_strings(rows, 3)
    assert e.value.row == 3000 and reason in e.value.reason
