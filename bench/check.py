"""`softlight check`: every op's results against the float64 reference, as a table.

For each op, dtype and shape it draws fresh random inputs, runs each provider checked
(softlight unless told otherwise) and torch on them, and records the relative norm error of the
forward output and of the gradient against the reference, next to the tolerance of the
result's dtype. torch's error is there for scale: ours should be no worse. The comparison is
the one the benchmark makes before timing (softlight.bench.ops), without the timing.
"""

import numpy as np
import pandas as pd
import torch

import softlight

from . import providers as registry
from .ops import Reference, make_inputs, verify
from .spec import DTYPES, OPS, dtype_name

# Few rows on the interpreter, where every program runs as Python; a GPU takes real sizes.
INTERPRETER_SHAPES = [(4, 1000), (2, 4097), (1, 33000), (1, 131072)]
GPU_SHAPES = [(4096, 1024), (1024, 4097), (256, 32000), (64, 131072), (16, 262144)]
DIRECTIONS = ("forward", "backward")


def run_check(ops=None, dtypes=None, shapes=None, providers=None, device=None, seed=None) -> pd.DataFrame:
    """The table of errors; `providers` are Provider objects (default: softlight)."""
    device = device or ("cpu" if softlight.INTERPRETED else "cuda")
    shapes = shapes or (INTERPRETER_SHAPES if softlight.INTERPRETED else GPU_SHAPES)
    dtypes = [dtype_name(d) for d in dtypes or DTYPES]
    bad_ops = [op for op in ops or OPS if op not in OPS]
    if bad_ops:
        raise ValueError(f"ops must be among {OPS}, got {bad_ops}")
    for shape in shapes:
        if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
            raise ValueError(f"shapes must be (rows, cols) pairs of positive ints, got {shape!r}")
    checked = providers or [registry.BUILTIN["softlight"]]
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    records = []
    for op in ops or OPS:
        torch_fn = registry.BUILTIN["torch"].implementation(op).fn
        for dtype in dtypes:
            for rows, cols in shapes:
                inputs = make_inputs(op, rows, cols, dtype, device, generator)
                reference = Reference(inputs, generator)
                scale = verify(inputs, reference, torch_fn)
                for provider in checked:
                    verdicts, status, note = _verdicts(provider, op, inputs, reference)
                    for direction in DIRECTIONS:
                        v = verdicts.get(direction)
                        records.append(dict(
                            op=op, direction=direction, provider=provider.name, dtype=dtype, rows=rows, cols=cols,
                            error=v.error if v else np.nan, torch_error=scale[direction].error,
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
    shown = df.copy()
    for c in ("error", "torch_error", "tolerance"):
        shown[c] = shown[c].map(lambda v: f"{v:.2e}" if np.isfinite(v) else str(v))
    if not shown.note.astype(bool).any():
        shown = shown.drop(columns="note")
    return shown.to_string(index=False)
