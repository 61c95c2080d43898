"""Writes example-results.csv and example-lean-results.csv, SYNTHETIC results tables for the
report and compare tests.

Nothing in them was measured. Each time is computed from a made-up, round rate (GB/s, or
TFLOP/s for linear_cross_entropy) and each peak memory from a made-up, round number of bytes per
logit, so the report's arithmetic can be followed by hand, and everything that names the run
says so: the device is "example-synthetic (not measured)", the versions and git revision are
"synthetic".

example-results.csv has what a report must handle: two ops in every direction, a columns sweep
and a rows sweep, a peer that is faster than softlight somewhere, a wrong result, an unsupported
direction and an unavailable provider. example-lean-results.csv holds the memory-lean losses
(token_logprobs, linear_cross_entropy), with a peer faster than softlight, a peer needing less
memory than softlight on one shape, a peer out of memory where softlight ran, and directions and
providers not timed. The two share the device, so they render as one report when concatenated.
Run this from the repository root to rewrite both files.
"""

from pathlib import Path

from softlight.bench import table
from softlight.bench.spec import DIRECTIONS, bytes_moved, matmul_flops

SHAPES = [(256, 4096), (32, 32000), (8, 131072), (4, 262144), (1, 131072), (2, 131072)]
CEILING = 3000.0  # GB/s, made up
# Made-up bandwidths in GB/s per provider, op and direction.
BANDWIDTH = {
    "softlight": {"softmax": 2400.0, "cross_entropy": 1800.0},
    "torch": {"softmax": 1200.0, "cross_entropy": 900.0},
    "torch.compile": {"softmax": 1500.0, "cross_entropy": 1200.0},
    "liger": {"softmax": 2000.0, "cross_entropy": 2000.0},
}
ENV = dict(device="example-synthetic (not measured)", torch="synthetic", triton="synthetic", git_rev="synthetic",
           date="2000-01-01T00:00:00Z")


def record(op, direction, provider, rows, cols):
    n_bytes = bytes_moved(op, direction, rows, cols, "bfloat16")
    row = dict(op=op, direction=direction, provider=provider, dtype="bfloat16", rows=rows, cols=cols, bytes=n_bytes,
               ceiling_gbps=CEILING, status="ok", note="", max_error=1e-3, tolerance=1e-2,
               ms_p50=float("nan"), ms_p20=float("nan"), ms_p80=float("nan"), gbps=float("nan"),
               pct_of_ceiling=float("nan"), peak_mem_bytes=None)
    if provider == "quack":
        return dict(row, status="unavailable", note="ModuleNotFoundError: No module named 'quack'",
                    max_error=float("nan"), tolerance=float("nan"))
    if provider == "liger" and op == "cross_entropy" and direction == "backward":
        return dict(row, status="unsupported", note="gradient computed in forward; backward not timed alone")
    if provider == "liger" and op == "softmax" and cols == 4096:
        return dict(row, status="wrong", max_error=0.5, note="error 0.5 > tolerance 1e-02: not timed")
    gbps = BANDWIDTH[provider][op]
    if provider == "softlight" and op == "softmax" and cols == 262144:
        gbps = 1000.0  # the shape where softlight loses to every peer
    ms = n_bytes / (gbps * 1e9) * 1e3
    return dict(row, ms_p50=ms, ms_p20=0.98 * ms, ms_p80=1.03 * ms, gbps=gbps, pct_of_ceiling=100 * gbps / CEILING,
                peak_mem_bytes=rows * cols * 2 * (1 if provider == "softlight" else 2))


LEAN_PROVIDERS = ("softlight", "torch", "torch.compile", "liger", "quack")
TOKEN_SHAPES = [(256, 4096), (32, 32000), (4, 262144)]
# Made-up GB/s of token_logprobs; liger and quack have none.
TOKEN_BANDWIDTH = {"softlight": 2000.0, "torch": 500.0, "torch.compile": 1000.0}
# Made-up peak bytes per logit of token_logprobs (forward, backward, forward+backward).
TOKEN_BYTES_PER_LOGIT = {"softlight": (0.0625, 2, 2), "torch": (4, 6, 8), "torch.compile": (2, 4, 4)}
LINEAR_SHAPES = [(4096, 32000, 4096), (4096, 262144, 4096), (16384, 32000, 4096), (16384, 262144, 4096)]
# Made-up TFLOP/s of linear_cross_entropy: torch is the fastest, softlight second.
LINEAR_TFLOPS = {"softlight": 400.0, "torch": 500.0, "torch.compile": 450.0, "liger": 250.0}
# Made-up peak bytes per logit (forward, forward+backward); liger needs less than softlight at 32000.
LINEAR_BYTES_PER_LOGIT = {"softlight": (0.25, 1), "torch": (6, 12), "torch.compile": (4, 8), "liger": (0.5, 2)}
LIGER_AT_32000 = 0.5
OUT_OF_MEMORY = "OutOfMemoryError: CUDA out of memory. Tried to allocate 16.00 GiB"


def token_record(direction, provider, rows, cols):
    n_bytes = bytes_moved("token_logprobs", direction, rows, cols, "bfloat16")
    row = dict(op="token_logprobs", direction=direction, provider=provider, dtype="bfloat16", rows=rows, cols=cols,
               bytes=n_bytes, ceiling_gbps=CEILING, status="ok", note="", max_error=1e-6, tolerance=1e-5,
               ms_p50=float("nan"), ms_p20=float("nan"), ms_p80=float("nan"), gbps=float("nan"),
               pct_of_ceiling=float("nan"), peak_mem_bytes=None)
    if provider not in TOKEN_BANDWIDTH:
        return dict(row, status="unsupported", note=f"{provider} has no token_logprobs", max_error=float("nan"),
                    tolerance=float("nan"))
    gbps = TOKEN_BANDWIDTH[provider]
    ms = n_bytes / (gbps * 1e9) * 1e3
    per_logit = TOKEN_BYTES_PER_LOGIT[provider][DIRECTIONS.index(direction)]
    return dict(row, ms_p50=ms, ms_p20=0.98 * ms, ms_p80=1.03 * ms, gbps=gbps, pct_of_ceiling=100 * gbps / CEILING,
                peak_mem_bytes=int(rows * cols * per_logit))


def linear_record(direction, provider, rows, cols, hidden):
    flops = matmul_flops("linear_cross_entropy", direction, rows, cols, hidden)
    row = dict(op="linear_cross_entropy", direction=direction, provider=provider, dtype="bfloat16", rows=rows,
               cols=cols, hidden=hidden, flops=flops, ceiling_gbps=CEILING, status="ok", note="", max_error=2e-6,
               tolerance=1e-5, ms_p50=float("nan"), ms_p20=float("nan"), ms_p80=float("nan"), tflops=float("nan"),
               peak_mem_bytes=None)
    if provider == "quack":
        return dict(row, status="unsupported", note="quack has no linear_cross_entropy", max_error=float("nan"),
                    tolerance=float("nan"))
    if provider in ("softlight", "liger") and direction == "backward":
        return dict(row, status="unsupported", note="gradients computed during forward; backward not timed alone")
    if provider == "torch" and (rows, cols) == (16384, 262144):
        return dict(row, status="error", note=OUT_OF_MEMORY, max_error=float("nan"), tolerance=float("nan"))
    tflops = LINEAR_TFLOPS[provider]
    ms = flops / (tflops * 1e12) * 1e3
    per_logit = LINEAR_BYTES_PER_LOGIT[provider][0 if direction == "forward" else 1]
    if provider == "liger" and cols == 32000:
        per_logit = LIGER_AT_32000 if direction != "forward" else per_logit
    return dict(row, ms_p50=ms, ms_p20=0.98 * ms, ms_p80=1.03 * ms, tflops=tflops,
                peak_mem_bytes=int(rows * cols * per_logit))


def main():
    records = [record(op, direction, provider, rows, cols)
               for op in ("softmax", "cross_entropy") for direction in DIRECTIONS
               for provider in ("softlight", "torch", "torch.compile", "liger", "quack") for rows, cols in SHAPES]
    table.write(table.finish(records, ENV), Path(__file__).with_name("example-results.csv"))
    lean = [token_record(direction, provider, rows, cols)
            for direction in DIRECTIONS for provider in LEAN_PROVIDERS for rows, cols in TOKEN_SHAPES]
    lean += [linear_record(direction, provider, *shape)
             for direction in DIRECTIONS for provider in LEAN_PROVIDERS for shape in LINEAR_SHAPES]
    table.write(table.finish(lean, ENV), Path(__file__).with_name("example-lean-results.csv"))


if __name__ == "__main__":
    main()
