"""The shapes the benchmark sweeps.

The columns sweep keeps rows x columns at a fixed total, large enough to fill the GPU and far
larger than its L2 cache (2**27 elements: 256 MiB in bf16, 512 MiB in fp32), so every point
measures streaming from memory. Its columns run from 1K to 256K and include the vocabulary
sizes of current language models (32000, 50257, 128256, 151936, 262144). The rows sweep holds
131072 columns and shrinks the rows down to one, where a kernel with one program per row can
no longer fill the GPU. token_logprobs, a row op on given logits, sweeps this grid too.

linear_cross_entropy has a grid of its own, shaped like a language model's last layer in
training: N tokens (4096, 8192, 16384: a batch of sequences) x V classes (32000, 128256, 262144)
at hidden size H = 4096 (as Llama 2 7B and Llama 3 8B have), bf16 only (the dtype such training
runs in). Its largest point holds 2**32 logits, 8 GiB in bf16, which the unfused torch path holds
several times over (the bf16 logits, their fp32 copy and log-softmax, their gradient): that is
the point of the op. The table records H in its own column.
"""

from .spec import DTYPES

__all__ = ["DEFAULT_TOTAL", "VOCAB_SIZES", "LINEAR_HIDDEN", "default_grid", "quick_grid", "linear_grid",
           "quick_linear_grid"]

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


LINEAR_TOKENS = (4096, 8192, 16384)
LINEAR_VOCAB = (32000, 128256, 262144)
LINEAR_HIDDEN = 4096
LINEAR_DTYPES = ("bfloat16",)
QUICK_LINEAR_TOKENS = (8192,)
QUICK_LINEAR_VOCAB = (32000, 262144)


def linear_grid() -> tuple[list[tuple[int, int, int]], tuple[str, ...]]:
    """(shapes as (tokens, vocabulary, hidden), dtypes) of linear_cross_entropy's sweep."""
    return [(n, v, LINEAR_HIDDEN) for n in LINEAR_TOKENS for v in LINEAR_VOCAB], LINEAR_DTYPES


def quick_linear_grid() -> tuple[list[tuple[int, int, int]], tuple[str, ...]]:
    """(shapes, dtypes) of a small linear sweep: one token count, the smallest and largest vocabulary."""
    return [(n, v, LINEAR_HIDDEN) for n in QUICK_LINEAR_TOKENS for v in QUICK_LINEAR_VOCAB], LINEAR_DTYPES
