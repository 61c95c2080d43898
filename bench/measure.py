"""The measurement loop: every provider checked against the reference, then timed, per shape.

Timing and memory come from a Device. CudaDevice is the only one that produces performance
numbers: triton.testing.do_bench (median, p20 and p80; L2 flushed between calls) and torch's
CUDA memory statistics. It refuses to exist on Triton's interpreter, whose timings are not
performance. Tests pass a device with a fake timer to exercise the whole loop on the CPU.
"""

import gc
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import pandas as pd
import torch

from . import table
from .ops import Reference, make_inputs, timed_call, verify
from .providers import Provider
from .spec import DIRECTIONS, LINEAR_OPS, OPS, bytes_moved, dtype_name, is_linear, matmul_flops

__all__ = ["Timing", "Device", "CudaDevice", "Case", "measure_ceiling", "run_sweep"]


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median, 20th and 80th percentiles."""

    p50: float
    p20: float
    p80: float


class Device(Protocol):
    name: str
    torch_device: str
    ceiling_bytes: int  # size of each buffer of the device-to-device copy that sets the ceiling

    def time(self, fn: Callable[[], object]) -> Timing: ...

    def peak_memory(self, fn: Callable[[], object]) -> int | None:
        """Peak bytes allocated while fn runs, above what was allocated before it."""


class CudaDevice:
    """The current CUDA GPU, timed with triton.testing.do_bench."""

    torch_device = "cuda"
    ceiling_bytes = 2**29  # 512 MiB each way: far beyond any L2, like the sweep's inputs

    def __init__(self):
        import softlight

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA GPU: nothing to time (use `softlight check` for correctness)")
        if softlight.INTERPRETED:
            raise RuntimeError("the kernels run on Triton's interpreter (TRITON_INTERPRET=1): its timings are not "
                               "performance; unset TRITON_INTERPRET to benchmark")
        self.name = torch.cuda.get_device_name()

    def time(self, fn):
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return Timing(p50, p20, p80)

    def peak_memory(self, fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before


@dataclass(frozen=True)
class Case:
    """One op on one (rows, cols) input of one dtype; a linear op also has its hidden size
    (hidden states (rows, hidden), weight (cols, hidden)), the other ops hidden 0."""

    op: str
    dtype: str
    rows: int
    cols: int
    hidden: int = 0

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"Case.op must be one of {OPS}, got {self.op!r}")
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        for name in ("rows", "cols", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and name != "hidden"):
                raise ValueError(f"Case.{name} must be a positive int, got {value!r}")
        if is_linear(self.op) and self.hidden == 0:
            raise ValueError(f"Case.hidden must be a positive int for {self.op} (its hidden size), got 0")
        if not is_linear(self.op) and self.hidden:
            raise ValueError(f"Case.hidden applies only to {', '.join(LINEAR_OPS)}; {self.op} got {self.hidden!r}")

    @property
    def label(self) -> str:
        return f"{self.rows}x{self.cols}" + (f"x{self.hidden}" if self.hidden else "")


def measure_ceiling(device: Device) -> float:
    """GB/s of a large device-to-device copy timed like every kernel (bytes read + written)."""
    src = torch.ones(device.ceiling_bytes // 4, dtype=torch.float32, device=device.torch_device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    timing = device.time(lambda: dst.copy_(src))
    return 2 * device.ceiling_bytes / (timing.p50 * 1e-3) / 1e9


def _error_note(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:300]


def _free(device: Device):
    gc.collect()
    if device.torch_device == "cuda":
        torch.cuda.empty_cache()


def _record(case, provider, direction, ceiling, status, note="", verdict=None, timing=None, peak=None):
    seconds = timing.p50 * 1e-3 if timing else math.nan
    if is_linear(case.op):
        n_bytes, gbps = None, math.nan
        flops = matmul_flops(case.op, direction, case.rows, case.cols, case.hidden)
        tflops = flops / seconds / 1e12
    else:
        n_bytes = bytes_moved(case.op, direction, case.rows, case.cols, case.dtype)
        gbps = n_bytes / seconds / 1e9
        flops, tflops = None, math.nan
    return dict(op=case.op, direction=direction, provider=provider.name, dtype=case.dtype,
                rows=case.rows, cols=case.cols, hidden=case.hidden, status=status,
                ms_p50=timing.p50 if timing else math.nan, ms_p20=timing.p20 if timing else math.nan,
                ms_p80=timing.p80 if timing else math.nan, bytes=n_bytes, gbps=gbps,
                pct_of_ceiling=100 * gbps / ceiling, ceiling_gbps=ceiling, flops=flops, tflops=tflops,
                peak_mem_bytes=math.nan if peak is None else peak,
                max_error=verdict.error if verdict else math.nan,
                tolerance=verdict.tolerance if verdict else math.nan, note=note)


def _provider_rows(case, provider: Provider, directions, inputs, reference, device, ceiling):
    """One provider on one case: a record per direction."""
    def record(direction, status, note="", verdict=None, timing=None, peak=None):
        return _record(case, provider, direction, ceiling, status, note, verdict, timing, peak)

    try:
        impl = provider.implementation(case.op)
    except ImportError as exc:
        return [record(d, "unavailable", _error_note(exc)) for d in directions]
    except Exception as exc:
        return [record(d, "error", _error_note(exc)) for d in directions]
    if impl is None:
        return [record(d, "unsupported", f"{provider.name} has no {case.op}") for d in directions]
    try:
        verdicts = verify(inputs, reference, impl.fn)
    except Exception as exc:
        return [record(d, "error", _error_note(exc)) for d in directions]

    records = []
    for direction in directions:
        verdict = verdicts[direction]
        if direction not in impl.directions:
            records.append(record(direction, "unsupported", impl.note or f"not timed {direction} alone", verdict))
        elif not verdict.ok:
            records.append(record(direction, "wrong", _wrong_note(verdict), verdict))
        else:
            try:
                timing, peak = _time_direction(inputs, impl.fn, direction, device)
                records.append(record(direction, "ok", "", verdict, timing, peak))
            except Exception as exc:
                records.append(record(direction, "error", _error_note(exc), verdict))
    return records


def _wrong_note(verdict) -> str:
    if verdict.note:
        return verdict.note
    if math.isinf(verdict.error):
        return "NaN or infinity where the reference has none: not timed"
    return f"error {verdict.error:.3g} > tolerance {verdict.tolerance:.0e}: not timed"


def _time_direction(inputs, fn, direction, device):
    call = timed_call(inputs, fn, direction)
    call()  # warm-up: compiles, autotunes and fills caches before any timing
    return device.time(call), device.peak_memory(call)


def run_sweep(cases: Iterable[Case], providers: list[Provider], device: Device, directions=DIRECTIONS,
              seed: int | None = None, progress: Callable[[Iterable], Iterable] = lambda it: it) -> pd.DataFrame:
    """Check, then time, every provider on every case and direction; one results table.

    `progress` wraps the iteration over (case, provider) pairs (a progress bar).
    """
    cases = list(cases)
    directions = list(directions)
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise ValueError(f"directions must be a non-empty selection of {DIRECTIONS}, got {directions}")
    if not providers or not all(isinstance(p, Provider) for p in providers):
        raise ValueError("providers must be a non-empty list of Provider (see softlight.bench.providers.resolve)")
    if not all(isinstance(c, Case) for c in cases):
        raise ValueError("cases must be Case objects")
    env = table.environment(device.name)
    generator = torch.Generator(device=device.torch_device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    ceiling = measure_ceiling(device)
    records = []
    work = [(case, provider) for case in cases for provider in providers]
    current = setup_error = None
    for case, provider in progress(work):
        if case != current:
            current, inputs, reference, setup_error = case, None, None, None
            _free(device)
            try:
                inputs = make_inputs(case.op, case.rows, case.cols, case.dtype, device.torch_device, generator,
                                     case.hidden)
                reference = Reference(inputs, generator)
            except Exception as exc:  # e.g. out of memory: this shape fails, the sweep goes on
                setup_error = f"inputs or reference: {_error_note(exc)}"
        if setup_error:
            records += [_record(case, provider, d, ceiling, "error", setup_error) for d in directions]
        else:
            records += _provider_rows(case, provider, directions, inputs, reference, device, ceiling)
    return table.finish(records, env)
