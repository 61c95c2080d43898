"""`softlight check`: every op's results against the float64 reference, as a table.

For each op, dtype and shape it draws fresh random inputs, runs each provider checked
(softlight unless told otherwise) and torch on them, and records the relative norm error of the
forward output and of the gradient against the reference, next to the tolerance of the
result's dtype. torch's error is there for scale: ours should be no worse. The comparison is
the one the benchmark makes before timing (softlight.bench.ops), without the timing.

linear_cross_entropy takes the same (rows, cols) shapes with a small hidden size of its own
(a shape may give one as a third size); the other ops take no hidden size.
"""

import numpy as np
import pandas as pd
import torch

import softlight

from . import providers as registry
from .ops import Reference, make_inputs, verify
from .spec import DTYPES, LINEAR_OPS, OPS, dtype_name

# Few rows on the interpreter, where every program runs as Python; a GPU takes real sizes.
INTERPRETER_SHAPES = [(4, 1000), (2, 4097), (1, 33000), (1, 131072)]
GPU_SHAPES = [(4096, 1024), (1024, 4097), (256, 32000), (64, 131072), (16, 262144)]
# The hidden size of linear ops on shapes that do not give one: the correctness of the chunked
# matmuls does not need a model's size, and on the interpreter the matmul runs on the CPU.
INTERPRETER_HIDDEN = 32
GPU_HIDDEN = 1024
DIRECTIONS = ("forward", "backward")


def _shape_of(op, shape, default_hidden):
    """(rows, cols, hidden) of `shape` for `op`: hidden 0 for the row ops."""
    if len(shape) == 3 and op not in LINEAR_OPS:
        raise ValueError(f"shape {'x'.join(map(str, shape))} has a hidden size, which applies only to "
                         f"{', '.join(LINEAR_OPS)}; {op} takes ROWSxCOLS")
    if op not in LINEAR_OPS:
        return (*shape, 0)
    return shape if len(shape) == 3 else (*shape, default_hidden)


def run_check(ops=None, dtypes=None, shapes=None, providers=None, device=None, seed=None) -> pd.DataFrame:
    """The table of errors; `providers` are Provider objects (default: softlight)."""
    device = device or ("cpu" if softlight.INTERPRETED else "cuda")
    shapes = shapes or (INTERPRETER_SHAPES if softlight.INTERPRETED else GPU_SHAPES)
    dtypes = [dtype_name(d) for d in dtypes or DTYPES]
    bad_ops = [op for op in ops or OPS if op not in OPS]
    if bad_ops:
        raise ValueError(f"ops must be among {OPS}, got {bad_ops}")
    for shape in shapes:
        if len(shape) not in (2, 3) or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
            raise ValueError(f"shapes must be (rows, cols) or (rows, cols, hidden) of positive ints, got {shape!r}")
    default_hidden = INTERPRETER_HIDDEN if softlight.INTERPRETED else GPU_HIDDEN
    cases = [(op, dtype, *_shape_of(op, shape, default_hidden)) for op in ops or OPS for dtype in dtypes
             for shape in shapes]
    checked = providers or [registry.BUILTIN["softlight"]]
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    records = []
    for op, dtype, rows, cols, hidden in cases:
        torch_fn = registry.BUILTIN["torch"].implementation(op).fn
        inputs = make_inputs(op, rows, cols, dtype, device, generator, hidden)
        reference = Reference(inputs, generator)
        scale = verify(inputs, reference, torch_fn)
        for provider in checked:
            verdicts, status, note = _verdicts(provider, op, inputs, reference)
            for direction in DIRECTIONS:
                v = verdicts.get(direction)
                records.append(dict(
                    op=op, direction=direction, provider=provider.name, dtype=dtype, rows=rows, cols=cols,
                    hidden=hidden, error=v.error if v else np.nan, torch_error=scale[direction].error,
                    tolerance=v.tolerance if v else np.nan,
                    status=status or ("ok" if v.ok else "FAIL"), note=note or (v.note if v else "")))
    return pd.DataFrame.from_records(records)


def _verdicts(provider, op, inputs, reference):
    """(verdict per direction, status if no verdicts, note): a provider that cannot run is
    unavailable (ImportError), unsupported (no such op) or an error, never skipped silently."""
    try:
        impl = provider.implementation(op)
        if impl is None:
            return {}, "unsupported", f"{provider.name} has no {op}"
        return verify(inputs, reference, impl.fn), None, ""
    except ImportError as exc:
        return {}, "unavailable", f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        return {}, "error", f"{type(exc).__name__}: {exc}"


def format_table(df: pd.DataFrame) -> str:
    """The check's table for the terminal. A provider that was not run (unsupported op,
    unavailable, raised) has no error to show: its cells say "not run", and its status why; a
    NaN that a provider did compute still prints as nan."""
    shown = df.copy()
    ran = ~df.status.isin(["unsupported", "unavailable", "error"])
    for c in ("error", "torch_error", "tolerance"):
        shown[c] = shown[c].map(lambda v: f"{v:.2e}" if np.isfinite(v) else str(v))
    shown.loc[~ran, ["error", "tolerance"]] = "not run"
    if not shown.note.astype(bool).any():
        shown = shown.drop(columns="note")
    if not shown.hidden.astype(bool).any():
        shown = shown.drop(columns="hidden")
    return shown.to_string(index=False)
