"""Times and sizes as the reports print them."""

import math

import numpy as np
import pytest

from softlight.bench.summary import shape_label
from softlight.bench.units import format_bytes, format_time, format_time_spread, time_unit


@pytest.mark.parametrize("ms, text", [
    (0.00105011, "1.05 µs"),   # was printed as "0.00105 ms"
    (0.000291, "291 ns"),
    (0.5, "500 µs"),
    (0.99996, "1 ms"),         # rounds up into the next unit, never "1e+03 µs"
    (88.0, "88 ms"),
    (78.2, "78.2 ms"),
    (1410.0, "1.41 s"),
    (math.nan, "-"),
    (None, "-"),
])
def test_times_read_in_their_own_unit(ms, text):
    assert format_time(ms) == text


def test_a_spread_shares_the_median_unit():
    assert format_time_spread(0.00105011, 0.00102911, 0.00108162) == "1.05 [1.03-1.08] µs"
    assert format_time_spread(88.0, math.nan, 90.0) == "88 ms"
    assert format_time_spread(math.nan, 1.0, 2.0) == "-"
    assert time_unit(0.02) == ("µs", 1e-3) and time_unit(20.0) == ("ms", 1.0)


def test_bytes_in_binary_units():
    assert format_bytes(np.int64(2**34)) == "16.00 GiB"
    assert format_bytes(65536) == "64.0 KiB"
    assert format_bytes(100) == "100 B"
    assert format_bytes(math.nan) == "-"


def test_shapes_are_written_one_way():
    assert shape_label(4096, 50257, 0) == "4096 x 50257"
    assert shape_label(8192, 128256, 4096) == "8192 x 128256 x 4096"
