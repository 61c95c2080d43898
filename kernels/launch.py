"""One way to launch: the tuning policy, block sizes, and every kernel launch going through `run`.

Every tuning knob lives in one `LaunchPolicy`; `use_policy` changes it for a block of code (the
tests force the streamed and split paths with it, the compile report its GPU's size):

    with launch.use_policy(row_block_limit=64, chunk=64):
        softlight.softmax(x)          # streams rows longer than 64 columns

Every kernel launch goes through `run`, which launches it, or records it instead
(`recording`: what each op module's `kernel_launches` hook lists for the compile report), or
skips it (`dry_run`: the fake implementations allocate exactly what the real ones do).
"""

import contextlib
import dataclasses
import functools
import threading
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .interpreter import INTERPRETED

__all__ = [
    "INTERPRETED",
    "LaunchPolicy",
    "policy",
    "use_policy",
    "LaunchConfig",
    "launch_config",
    "split_count",
    "KernelLaunch",
    "run",
    "recording",
    "dry_run",
    "is_dry_run",
    "accumulator",
]


@dataclass(frozen=True)
class LaunchPolicy:
    """Every tuning knob of the kernels and of the chunked linear losses."""

    # Longest row held whole on chip, in fp32 elements for one tensor. With 32 warps a thread may
    # use at most 64 registers; 32768 elements leave it 32 of them for the row. Up to this a row
    # is read once and written once; longer rows are streamed in `chunk`-sized pieces.
    row_block_limit: int = 32768
    # Piece size for rows streamed with the online algorithm.
    chunk: int = 8192
    # Elements each thread holds per block: 16 keeps two 16-byte loads of bf16 in flight.
    elements_per_thread: int = 16
    # Short rows share a program, up to `tile` elements a program and at most `max_rows` rows: one
    # program per 3-class row would leave most of its threads idle on a GPU, and pay the
    # interpreter's per-operation cost once per row.
    tile: int = 4096
    max_rows: int = 256
    # Programs wanted in flight before a row is shared between programs. None: 4 per
    # multiprocessor on a GPU, and 1 (never split) on the interpreter, where splitting buys nothing.
    target_programs: int | None = None
    # The fewest rows a chunk of the linear losses gets by default: fewer would leave the matmuls
    # too small to fill a GPU.
    min_chunk_rows: int = 256


# One policy for the whole process (not per thread: autograd runs backward on its own threads).
_policy = LaunchPolicy()


def policy() -> LaunchPolicy:
    """The launch policy in force."""
    return _policy


@contextlib.contextmanager
def use_policy(**changes):
    """Run a block of code with some knobs of the launch policy changed (LaunchPolicy's fields)."""
    global _policy
    saved = _policy
    _policy = dataclasses.replace(saved, **changes)
    try:
        yield _policy
    finally:
        _policy = saved


def accumulator(dtype: torch.dtype):
    """fp32 accumulation for every dtype but float64, which keeps float64 (for gradcheck)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


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
    row of up to row_block_limit / cost elements, cost = rows_held (times 4 in float64), is one
    block, read once and written once; a longer row, or any row of a kernel that only streams
    (`stream`, such as cross-entropy's one pass), goes in blocks of up to chunk / cost elements.
    Rows of one block share a program, up to tile / cost elements in all. Warps grow with the
    elements a program holds so each thread keeps elements_per_thread of them (1 to 32 warps).
    """
    p = policy()
    cost = rows_held * (4 if dtype == torch.float64 else 1)
    limit = max(p.row_block_limit // cost, 1)
    chunk = triton.next_power_of_2(max(min(p.chunk, p.row_block_limit) // cost, 1))
    if stream:
        block, single = min(triton.next_power_of_2(max(n_cols, 1)), chunk), n_cols <= chunk
    elif n_cols <= limit:
        block, single = triton.next_power_of_2(max(n_cols, 1)), True
    else:
        block, single = chunk, False
    rows = min(max(p.tile // cost // block, 1), p.max_rows) if single else 1
    num_warps = min(max(block * rows // (32 * p.elements_per_thread), 1), 32)
    return LaunchConfig(block, single, num_warps, rows)


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def split_count(n_rows: int, n_cols: int, block: int, device: torch.device) -> int:
    """How many programs share each row, so that a few long rows still fill the GPU.

    With n_rows below the programs wanted, each row's columns are split into that many ranges
    of whole blocks, one program each, and their partial results are combined afterwards.
    """
    wanted = policy().target_programs
    if wanted is None:
        on_gpu = device.type == "cuda" and not INTERPRETED
        wanted = 4 * _multiprocessors(device.index if device.index is not None else torch.cuda.current_device()) if on_gpu else 1
    if n_rows >= wanted:
        return 1
    return max(1, min(triton.cdiv(n_cols, block), triton.cdiv(wanted, max(n_rows, 1))))


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch: the kernel, its grid, its arguments, its compile-time constants."""

    kernel: object  # a triton.JITFunction (a plain function on the interpreter)
    grid: tuple
    args: tuple
    constexprs: dict
    num_warps: int


_mode = threading.local()  # per thread: a fake implementation runs on the thread that traces it


def run(kernel, grid, *args, num_warps: int, **constexprs) -> None:
    """Launch `kernel` over `grid`, or record the launch (`recording`), or skip it (`dry_run`).

    Compiled, the kernel goes through torch.library.wrap_triton, so that make_fx and Inductor
    see the launch inside a triton_op; on the interpreter it is called as it is.
    """
    record = getattr(_mode, "record", None)
    if record is not None:
        record.append(KernelLaunch(kernel, tuple(grid), args, constexprs, num_warps))
        return
    if getattr(_mode, "dry", False):
        return
    if isinstance(kernel, triton.runtime.JITFunction):
        kernel = torch.library.wrap_triton(kernel)
    kernel[tuple(grid)](*args, num_warps=num_warps, **constexprs)


@contextlib.contextmanager
def recording():
    """Record every launch `run` is asked for, in order, instead of launching: yields the list."""
    launches = []
    saved = getattr(_mode, "record", None)
    _mode.record = launches
    try:
        yield launches
    finally:
        _mode.record = saved


@contextlib.contextmanager
def dry_run():
    """Launch nothing: the code around the launches (allocations, shapes) runs as usual."""
    saved = getattr(_mode, "dry", False)
    _mode.dry = True
    try:
        yield
    finally:
        _mode.dry = saved


def is_dry_run() -> bool:
    """True inside `dry_run` or `recording`: no kernel runs, and host-side checks of values
    (which fake tensors cannot answer) are skipped."""
    return getattr(_mode, "dry", False) or getattr(_mode, "record", None) is not None
