"""`softlight check`: every kernel against the float64 reference, as a table.

For each op, direction, dtype and shape it draws fresh random logits, runs softlight and torch
on them, and records each one's relative norm error against the reference next to the
tolerance of the output dtype. torch's error is there for scale: ours should be no worse.
"""

import numpy as np
import pandas as pd
import torch

import softlight
from softlight import reference as ref

OPS = {
    # name: (softlight function, torch function, reference forward, reference backward)
    "softmax": (softlight.softmax, torch.softmax, ref.softmax, ref.softmax_backward),
    "log_softmax": (softlight.log_softmax, torch.log_softmax, ref.log_softmax, ref.log_softmax_backward),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Few rows on the interpreter, where every program runs as Python; a GPU takes real sizes.
INTERPRETER_SHAPES = [(4, 1000), (2, 4097), (1, 33000), (1, 131072)]
GPU_SHAPES = [(4096, 1024), (1024, 4097), (256, 32000), (64, 131072), (16, 262144)]


def _np(t):
    return t.detach().to("cpu", torch.float64).numpy()


def check_one(op, dtype, rows, cols, device):
    """Relative errors of softlight and torch, forward and backward, on one fresh input."""
    ours, theirs, ref_fwd, ref_bwd = OPS[op]
    x = (torch.randn(rows, cols, device=device) * 4).to(dtype)
    dy = torch.randn(rows, cols, device=device).to(dtype)
    results = []
    for provider, fn in (("softlight", ours), ("torch", theirs)):
        xg = x.clone().requires_grad_()
        y = fn(xg, -1)
        y.backward(dy)
        y_np = _np(y)
        fwd_err = ref.relative_error(y_np, ref_fwd(_np(x)))
        # Backward takes the provider's own saved output (see the tests for why).
        bwd_err = ref.relative_error(_np(xg.grad), ref_bwd(y_np, _np(dy)))
        results += [(provider, "forward", fwd_err), (provider, "backward", bwd_err)]
    return results


def run_check(ops=None, dtypes=None, shapes=None, device=None) -> pd.DataFrame:
    device = device or ("cpu" if softlight.INTERPRETED else "cuda")
    shapes = shapes or (INTERPRETER_SHAPES if softlight.INTERPRETED else GPU_SHAPES)
    records = []
    for op in ops or OPS:
        for dtype_name in dtypes or DTYPES:
            for rows, cols in shapes:
                errors = check_one(op, DTYPES[dtype_name], rows, cols, device)
                for direction in ("forward", "backward"):
                    ours = next(e for p, d, e in errors if p == "softlight" and d == direction)
                    torch_err = next(e for p, d, e in errors if p == "torch" and d == direction)
                    tol = ref.TOLERANCE[dtype_name]
                    records.append(dict(op=op, direction=direction, dtype=dtype_name, rows=rows, cols=cols,
                                        error=ours, torch_error=torch_err, tolerance=tol,
                                        status="ok" if ours <= tol else "FAIL"))
    return pd.DataFrame.from_records(records)


def format_table(df: pd.DataFrame) -> str:
    shown = df.copy()
    for c in ("error", "torch_error", "tolerance"):
        shown[c] = shown[c].map(lambda v: f"{v:.2e}" if np.isfinite(v) else str(v))
    return shown.to_string(index=False)
