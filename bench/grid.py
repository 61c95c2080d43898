"""The shapes the benchmark sweeps.

The columns sweep keeps rows x columns at a fixed total, large enough to fill the GPU and far
larger than its L2 cache (2**27 elements: 256 MiB in bf16, 512 MiB in fp32), so every point
measures streaming from memory. Its columns run from 1K to 256K and include the vocabulary
sizes of current language models (32000, 50257, 128256, 151936, 262144). The rows sweep holds
131072 columns and shrinks the rows down to one, where a kernel with one program per row can
no longer fill the GPU.
"""

from .spec import DTYPES

__all__ = ["DEFAULT_TOTAL", "VOCAB_SIZES", "default_grid", "quick_grid"]

DEFAULT_TOTAL = 2**27
VOCAB_SIZES = (32000, 50257, 128256, 151936, 262144)
_POWERS_OF_TWO = (1024, 4096, 8192, 16384, 65536, 131072)
ROWS_SWEEP_COLS = 131072
ROWS_SWEEP = (1, 4, 16, 64, 256)

QUICK_TOTAL = 2**26
QUICK_COLS = (4096, 32000, 131072, 262144)
QUICK_ROWS_SWEEP = (16,)
QUICK_DTYPES = ("bfloat16",)


def _grid(total, cols_sweep, rows_sweep):
    shapes = [(total // cols, cols) for cols in sorted(cols_sweep)]
    shapes += [(rows, ROWS_SWEEP_COLS) for rows in rows_sweep if (rows, ROWS_SWEEP_COLS) not in shapes]
    return shapes


def default_grid() -> tuple[list[tuple[int, int]], tuple[str, ...]]:
    """(shapes, dtypes) of the full sweep."""
    return _grid(DEFAULT_TOTAL, set(_POWERS_OF_TWO) | set(VOCAB_SIZES), ROWS_SWEEP), DTYPES


def quick_grid() -> tuple[list[tuple[int, int]], tuple[str, ...]]:
    """(shapes, dtypes) of a small sweep: four column counts and one short rows point, bf16 only."""
    return _grid(QUICK_TOTAL, QUICK_COLS, QUICK_ROWS_SWEEP), QUICK_DTYPES
