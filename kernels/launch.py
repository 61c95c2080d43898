"""How every softlight kernel meets a tensor: argument checks, the row view, block sizes.

The kernels never see a tensor's shape. They see *rows*: a reduction over ``dim`` of a tensor
of any rank and any strides is a set of independent rows of ``n_cols`` elements. Row ``r`` is
split into an (outer, inner) pair, ``r = outer * n_inner + inner``, and element ``c`` of the row
lives at ``outer * stride_outer + inner * stride_inner + c * stride_col``. Two row strides are
enough for a contiguous tensor reduced over any dim (outer: the dims before it, inner: the dims
after it), and for transposed, sliced or expanded views as long as the dims other than ``dim``
collapse into at most two strided groups; only the rare view that does not is copied first.
"""

import functools
import math
import warnings
from dataclasses import dataclass
from numbers import Real

import torch
import triton
import triton.language as tl

__all__ = [
    "INTERPRETED",
    "FLOAT_DTYPES",
    "RowLayout",
    "LaunchConfig",
    "launch_config",
    "row_layout",
    "as_rows",
    "row_offset",
    "check_float_tensor",
    "check_dim",
    "check_device",
    "check_temperature",
    "accumulator",
]


@triton.jit
def _probe():
    pass


# True when triton.jit hands back interpreted functions: TRITON_INTERPRET=1 was set before
# triton was imported, and the kernels run on CPU tensors through Triton's interpreter.
INTERPRETED = not isinstance(_probe, triton.runtime.JITFunction)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _bf16_bits_nearest_even(f32):
    """bfloat16 bit patterns of float32 values, rounded to nearest even (NaN kept quiet)."""
    import numpy as np

    bits = np.ascontiguousarray(f32, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    return np.where(np.isnan(f32), (bits >> 16) | np.uint32(0x40), rounded).astype(np.uint16)


def _float32_rounded_to_odd(f64):
    """float32 values of float64 ones, rounded to odd: truncated toward zero, with the last bit
    set when anything was dropped. Rounding that to bf16 (16 fewer bits) then rounds as if from
    the float64 value itself, with no double rounding."""
    import numpy as np

    f64 = np.ascontiguousarray(f64, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        f32 = f64.astype(np.float32)
        back = f32.astype(np.float64)
    inexact = (back != f64) & np.isfinite(f64)
    bits = f32.view(np.uint32)
    # One step toward zero where float32's own rounding went away from it (inf becomes the
    # largest finite float32, which still rounds to bf16 inf).
    bits = np.where(inexact & (np.abs(back) > np.abs(f64)), bits - np.uint32(1), bits)
    bits = np.where(inexact, bits | np.uint32(1), bits)
    return bits.astype(np.uint32).view(np.float32)


def _fix_interpreter_bf16_casts():
    """Make the interpreter's casts to bfloat16 round as the GPU's cvt.rn does. Interpreter only.

    Triton 3.6's interpreter gets two of them wrong: float32 -> bf16 truncates (costing bf16
    outputs up to a whole ulp that compiled kernels do not lose), and float64 -> bf16 is a NumPy
    `astype(uint16)` of the value, so it returns garbage (softmax(x, dtype=torch.bfloat16) of a
    float64 x gave NaN, and a float64 output's bf16 gradient zeros or NaN). sm_90 converts
    float64 -> bf16 in one rounding (cvt.rn.bf16.f64); the replacement rounds once as well.
    Other casts, and the compiled kernels, are left as they are; nothing is touched unless the
    interpreter's internals are as expected.
    """
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    cast_impl = getattr(builder, "cast_impl", None)
    if cast_impl is None or getattr(cast_impl, "_softlight_bf16", False):
        return

    def cast_to_bf16_nearest(self, src, dst_type):
        if dst_type.scalar == tl.bfloat16 and src.dtype.scalar in (tl.float32, tl.float64):
            f32 = src.data if src.dtype.scalar == tl.float32 else _float32_rounded_to_odd(src.data)
            return interpreter.TensorHandle(_bf16_bits_nearest_even(f32), tl.bfloat16)
        return cast_impl(self, src, dst_type)

    cast_to_bf16_nearest._softlight_bf16 = True
    builder.cast_impl = cast_to_bf16_nearest


if INTERPRETED:
    _fix_interpreter_bf16_casts()
    # The interpreter computes masked-off lanes as well (log 0, inf - inf there) and NumPy warns
    # about them; those lanes are never stored, so the warnings say nothing about any result.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"triton\.runtime\.interpreter")


# ---------------------------------------------------------------------------------------------
# Argument checks shared by every public function. Each names the function and the argument.


def check_float_tensor(fn: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{fn}: {name} must be a floating-point tensor of dtype float16, bfloat16, float32 or "
            f"float64, got {t.dtype}"
        )


def check_dim(dim, ndim: int) -> int:
    """torch's rule and message for a dim argument: an int in [-ndim, ndim) (0-d counts as 1-d)."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-rank}, {rank - 1}], but got {dim})"
        )
    return dim % rank


def check_device(fn: str, name: str, t: torch.Tensor) -> None:
    """The compiled kernels run on CUDA (and ROCm, which torch also calls "cuda") tensors;
    the interpreter runs on CPU tensors."""
    if t.device.type == "cuda" or (INTERPRETED and t.device.type == "cpu"):
        return
    if t.device.type == "cpu":
        raise RuntimeError(
            f"{fn}: {name} is on the CPU, and the Triton kernels need a CUDA device. To run them "
            "on the CPU through Triton's interpreter (slow, for testing), set the environment "
            "variable TRITON_INTERPRET=1 before softlight or triton is imported."
        )
    raise RuntimeError(f"{fn}: {name} is on device {t.device}, which the Triton kernels cannot run on")


def check_temperature(fn: str, temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise TypeError(f"{fn}: temperature must be a real number, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{fn}: temperature must be finite and > 0, got {temperature}")
    return temperature


def accumulator(dtype: torch.dtype):
    """fp32 accumulation for every dtype but float64, which keeps float64 (for gradcheck)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


# ---------------------------------------------------------------------------------------------
# The row view.


@dataclass(frozen=True)
class RowLayout:
    n_outer: int
    n_inner: int
    n_cols: int
    # (stride_outer, stride_inner, stride_col) of each tensor, in the order they were given.
    strides: tuple

    @property
    def n_rows(self) -> int:
        return self.n_outer * self.n_inner


def row_layout(dim: int, *tensors: torch.Tensor) -> RowLayout | None:
    """The row view shared by tensors of one shape reduced over `dim`, or None when their
    strides do not collapse into two row strides."""
    shape = tensors[0].shape
    dim = dim % max(len(shape), 1)
    n_cols = shape[dim] if len(shape) else 1
    # Dims other than `dim`, each as (size, its stride in every tensor); size-1 dims carry nothing.
    dims = [(shape[d], [t.stride(d) for t in tensors]) for d in range(len(shape)) if d != dim and shape[d] != 1]
    groups = []
    for size, strides in dims:
        # The previous group steps over this dim exactly when, in every tensor, its stride is
        # this dim's stride times this dim's size: then the two are one dim.
        if groups and all(gs == s * size for gs, s in zip(groups[-1][1], strides)):
            groups[-1] = (groups[-1][0] * size, strides)
        else:
            groups.append((size, strides))
    if len(groups) > 2:
        return None
    groups = [(1, [0] * len(tensors))] * (2 - len(groups)) + groups
    (n_outer, outer), (n_inner, inner) = groups
    col = [t.stride(dim) if t.dim() else 1 for t in tensors]
    return RowLayout(n_outer, n_inner, n_cols, tuple(zip(outer, inner, col)))


def as_rows(dim: int, inputs, out_dtypes):
    """Allocate outputs shaped like inputs[0] (keeping its memory layout when it is dense) and
    return (layout, inputs, outputs) viewed as rows over `dim`. Only when the strides of the
    inputs and outputs cannot share one row view are the inputs copied to contiguous memory."""
    like = inputs[0]
    outputs = [torch.empty_like(like, dtype=dt) for dt in out_dtypes]
    layout = row_layout(dim, *inputs, *outputs)
    if layout is None:
        inputs = [t.contiguous() for t in inputs]
        outputs = [torch.empty(like.shape, dtype=dt, device=like.device) for dt in out_dtypes]
        layout = row_layout(dim, *inputs, *outputs)
    return layout, inputs, outputs


@triton.jit
def row_offset(row, n_inner, stride_outer, stride_inner):
    """Offset in elements (int64) of the first element of row `row` of a RowLayout."""
    outer = row // n_inner
    inner = row - outer * n_inner
    return outer.to(tl.int64) * stride_outer + inner.to(tl.int64) * stride_inner


# ---------------------------------------------------------------------------------------------
# Block sizes: one heuristic for every kernel.

# Longest row held whole on chip, in fp32 elements for one tensor. With 32 warps a thread may
# use at most 64 registers; 32768 elements leave it 32 of them for the row. Up to this a row is
# read once and written once; longer rows are streamed in CHUNK-sized pieces.
ROW_BLOCK_LIMIT = 32768
# Piece size for rows streamed with the online algorithm.
CHUNK = 8192
# Elements each thread holds per block: 16 keeps two 16-byte loads of bf16 in flight per thread.
ELEMENTS_PER_THREAD = 16
# Short rows share a program, ROWS of them, up to this many elements a program (and at most
# MAX_ROWS rows): one program per 3-class row would leave most of its threads idle on a GPU, and
# pay the interpreter's per-operation cost once per row.
TILE = 4096
MAX_ROWS = 256


@dataclass(frozen=True)
class LaunchConfig:
    block: int  # columns a program handles at once (a power of two)
    single_block: bool  # whether the whole row fits one block
    num_warps: int
    rows: int = 1  # rows a program handles (a power of two; > 1 only for single-block rows)


def launch_config(n_cols: int, dtype: torch.dtype = torch.float32, rows_held: int = 1, stream: bool = False) -> LaunchConfig:
    """Block size, rows per program and warps for rows of `n_cols` elements.

    `rows_held` is how many row-sized tensors a kernel keeps in registers at once (2 for
    softmax backward: y and dy). float64 rows count four times (their arithmetic takes twice the
    registers and more temporaries: the compile report showed spills at half). A
    row of up to ROW_BLOCK_LIMIT / cost elements, cost = rows_held (times 4 in float64), is one
    block, read once and written once; a longer row, or any row of a kernel that only streams
    (`stream`, such as cross-entropy's one pass), goes in blocks of up to CHUNK / cost elements.
    Rows of one block share a program, up to TILE / cost elements in all. Warps grow with the
    elements a program holds so each thread keeps ELEMENTS_PER_THREAD of them (1 to 32 warps).
    """
    cost = rows_held * (4 if dtype == torch.float64 else 1)
    limit = max(ROW_BLOCK_LIMIT // cost, 1)
    chunk = triton.next_power_of_2(max(min(CHUNK, ROW_BLOCK_LIMIT) // cost, 1))
    if stream:
        block, single = min(triton.next_power_of_2(max(n_cols, 1)), chunk), n_cols <= chunk
    elif n_cols <= limit:
        block, single = triton.next_power_of_2(max(n_cols, 1)), True
    else:
        block, single = chunk, False
    rows = min(max(TILE // cost // block, 1), MAX_ROWS) if single else 1
    num_warps = min(max(block * rows // (32 * ELEMENTS_PER_THREAD), 1), 32)
    return LaunchConfig(block, single, num_warps, rows)


# Programs wanted in flight before a row is shared between programs. None: 4 per multiprocessor
# on a GPU, and 1 (never split) on the interpreter, where splitting buys nothing. Tests set it
# to force the split path.
TARGET_PROGRAMS = None


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def split_count(n_rows: int, n_cols: int, block: int, device: torch.device) -> int:
    """How many programs share each row, so that a few long rows still fill the GPU.

    With n_rows below the programs wanted, each row's columns are split into that many ranges
    of whole blocks, one program each, and their partial results are combined afterwards.
    """
    wanted = TARGET_PROGRAMS
    if wanted is None:
        on_gpu = device.type == "cuda" and not INTERPRETED
        wanted = 4 * _multiprocessors(device.index if device.index is not None else torch.cuda.current_device()) if on_gpu else 1
    if n_rows >= wanted:
        return 1
    return max(1, min(triton.cdiv(n_cols, block), triton.cdiv(wanted, max(n_rows, 1))))


# ---------------------------------------------------------------------------------------------
# Registering the ops with torch.library, so that torch.compile and CUDA graphs see them whole.


def launchable(kernel):
    """How an op's body calls a kernel: through torch.library.wrap_triton when compiled, so that
    make_fx and Inductor see the launch inside a triton_op; as it is on the interpreter (and for
    the compile report's recorders, which stand in for kernels)."""
    if isinstance(kernel, triton.runtime.JITFunction):
        return torch.library.wrap_triton(kernel)
    return kernel


def register_op(name: str, fake):
    """Register `fn` as the custom op softlight::<name>.

    Compiled, it is a torch.library.triton_op: its body (plain torch and wrap_triton'd kernel
    calls) doubles as the fake implementation, and Inductor can trace into it. On the
    interpreter, where kernels are Python and cannot be traced, it is an opaque custom_op with
    `fake` (which allocates the outputs exactly as the body does, but launches nothing) as its
    fake implementation.
    """

    def register(fn):
        if INTERPRETED:
            op = torch.library.custom_op(f"softlight::{name}", fn, mutates_args=())
            op.register_fake(fake)
            return op
        return torch.library.triton_op(f"softlight::{name}", fn, mutates_args=())

    return register
