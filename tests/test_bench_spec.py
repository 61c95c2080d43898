"""The benchmark's vocabulary: the bytes and flops models, dtype and shape parsing, the grids."""

import pytest

from softlight.bench import grid
from softlight.bench.spec import LINEAR_OPS, OPS, ROW_OPS, bytes_moved, dtype_name, matmul_flops, parse_shape, slugify


@pytest.mark.parametrize("dtype, size", [("bfloat16", 2), ("float16", 2), ("float32", 4)])
def test_bytes_model_softmax_ops(dtype, size):
    n, v = 3, 1000
    for op in ("softmax", "log_softmax"):
        assert bytes_moved(op, "forward", n, v, dtype) == 2 * n * v * size          # read x, write y
        assert bytes_moved(op, "backward", n, v, dtype) == 3 * n * v * size         # read y, dy; write dx
        assert bytes_moved(op, "forward+backward", n, v, dtype) == 5 * n * v * size


@pytest.mark.parametrize("dtype, size", [("bfloat16", 2), ("float32", 4)])
def test_bytes_model_cross_entropy(dtype, size):
    n, v = 7, 50257
    targets = 8 * n  # int64 class indices
    assert bytes_moved("cross_entropy", "forward", n, v, dtype) == n * v * size + targets
    # The gradient written: the logits read once and the gradient written, at best.
    assert bytes_moved("cross_entropy", "backward", n, v, dtype) == 2 * n * v * size + targets
    assert bytes_moved("cross_entropy", "forward+backward", n, v, dtype) == 2 * n * v * size + targets


@pytest.mark.parametrize("dtype, size", [("bfloat16", 2), ("float32", 4)])
def test_bytes_model_token_logprobs(dtype, size):
    n, v = 5, 128256
    per_row = 8 + 4  # an int64 id read, a float32 log-probability written (or its gradient read)
    assert bytes_moved("token_logprobs", "forward", n, v, dtype) == n * v * size + n * per_row
    # Backward reads the logits and writes their gradient.
    assert bytes_moved("token_logprobs", "backward", n, v, dtype) == 2 * n * v * size + n * per_row
    # The incoming gradient is per row, known only after forward: the two passes in sequence.
    assert bytes_moved("token_logprobs", "forward+backward", n, v, dtype) == 3 * n * v * size + 2 * n * per_row


def test_flops_model_linear_cross_entropy():
    n, v, h = 4096, 128256, 4096
    matmul = 2 * n * h * v
    assert matmul_flops("linear_cross_entropy", "forward", n, v, h) == matmul            # the logits
    assert matmul_flops("linear_cross_entropy", "backward", n, v, h) == 2 * matmul       # d hidden, d weight
    assert matmul_flops("linear_cross_entropy", "forward+backward", n, v, h) == 3 * matmul
    # The grid's largest point, exactly (no float rounding of the product).
    assert matmul_flops("linear_cross_entropy", "forward+backward", 16384, 262144, 4096) == 6 * 16384 * 262144 * 4096


def test_each_op_has_one_work_model():
    assert set(ROW_OPS) | set(LINEAR_OPS) == set(OPS) and not set(ROW_OPS) & set(LINEAR_OPS)
    with pytest.raises(ValueError, match="measured in flops"):
        bytes_moved("linear_cross_entropy", "forward", 1, 8, "bfloat16")
    with pytest.raises(ValueError, match="measured in bytes"):
        matmul_flops("token_logprobs", "forward", 1, 8, 4)
    with pytest.raises(ValueError, match="hidden"):
        matmul_flops("linear_cross_entropy", "forward", 1, 8, 0)


def test_bytes_model_is_exact_for_large_shapes():
    assert bytes_moved("softmax", "forward", 2**20, 262144, "float32") == 2 * 2**20 * 262144 * 4


@pytest.mark.parametrize("args, match", [
    (("sigmoid", "forward", 1, 1, "float32"), "op"),
    (("softmax", "sideways", 1, 1, "float32"), "direction"),
    (("softmax", "forward", 0, 1, "float32"), "rows"),
    (("softmax", "forward", 1, 2.5, "float32"), "cols"),
    (("softmax", "forward", 1, 1, "int8"), "dtype"),
])
def test_bytes_model_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        bytes_moved(*args)


def test_dtype_names_and_aliases():
    assert [dtype_name(n) for n in ("bf16", "FP16", "fp32", "float32")] == ["bfloat16", "float16", "float32", "float32"]
    with pytest.raises(ValueError, match="dtype must be one of"):
        dtype_name("float64")


def test_parse_shape():
    assert parse_shape("4096x32000") == (4096, 32000)
    assert parse_shape(" 1X131072 ") == (1, 131072)
    assert parse_shape("8192x128256x4096") == (8192, 128256, 4096)
    for bad in ("4096", "0x10", "4x-1", "axb", "4x3x2x1", "4x3x0"):
        with pytest.raises(ValueError, match="ROWSxCOLS"):
            parse_shape(bad)


def test_slugify_device_names():
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slugify("example-synthetic (not measured)") == "example-synthetic-not-measured"
    with pytest.raises(ValueError, match="device name"):
        slugify(" () ")


def test_default_grid():
    shapes, dtypes = grid.default_grid()
    assert set(dtypes) == {"bfloat16", "float16", "float32"}
    cols = {c for _, c in shapes}
    assert {1024, 262144, *grid.VOCAB_SIZES} <= cols and min(cols) == 1024 and max(cols) == 262144
    # The columns sweep holds rows x columns at the fixed total (up to rounding of the rows).
    by_cols = {}
    for r, c in shapes:
        by_cols[c] = max(by_cols.get(c, 0), r)
    for c, r in by_cols.items():
        assert r == grid.DEFAULT_TOTAL // c
    # The rows sweep at 128K columns goes down to one row, with no shape twice.
    assert {r for r, c in shapes if c == 131072} >= {1, 4, 16, 64, 256, grid.DEFAULT_TOTAL // 131072}
    assert len(shapes) == len(set(shapes))


def test_quick_grid_is_a_small_bf16_sweep():
    shapes, dtypes = grid.quick_grid()
    assert dtypes == ("bfloat16",)
    assert len(shapes) < len(grid.default_grid()[0])
    assert 262144 in {c for _, c in shapes}



def test_linear_grid_is_a_language_model_head_in_bf16():
    shapes, dtypes = grid.linear_grid()
    assert dtypes == ("bfloat16",)
    assert {n for n, _, _ in shapes} == {4096, 8192, 16384}
    assert {v for _, v, _ in shapes} == {32000, 128256, 262144}
    assert {h for _, _, h in shapes} == {grid.LINEAR_HIDDEN} == {4096}
    assert len(shapes) == len(set(shapes)) == 9
    quick, quick_dtypes = grid.quick_linear_grid()
    assert set(quick) < set(shapes) and quick_dtypes == dtypes
    assert {v for _, v, _ in quick} == {32000, 262144}
