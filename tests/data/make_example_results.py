"""Writes example-results.csv, a SYNTHETIC results table for the report and compare tests.

Nothing in it was measured. Each time is computed from a made-up, round bandwidth (GB/s) so the
report's arithmetic can be followed by hand, and everything that names the run says so: the
device is "example-synthetic (not measured)", the versions and git revision are "synthetic".
It has what a report must handle: two ops in every direction, a columns sweep and a rows sweep,
a peer that is faster than softlight somewhere, a wrong result, an unsupported direction and an
unavailable provider. Run it from the repository root to rewrite the file.
"""

from pathlib import Path

from softlight.bench import table
from softlight.bench.spec import DIRECTIONS, bytes_moved

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


def main():
    records = [record(op, direction, provider, rows, cols)
               for op in ("softmax", "cross_entropy") for direction in DIRECTIONS
               for provider in ("softlight", "torch", "torch.compile", "liger", "quack") for rows, cols in SHAPES]
    table.write(table.finish(records, ENV), Path(__file__).with_name("example-results.csv"))


if __name__ == "__main__":
    main()
