"""Times and sizes as people read them: 1.05 µs rather than 0.00105 ms, 1.00 GiB rather than
1073741824. The results table keeps milliseconds and bytes; only what is printed or plotted
goes through here.
"""

import math
from numbers import Real

__all__ = ["TIME_UNITS", "time_unit", "format_time", "format_time_spread", "format_bytes"]

# (name, milliseconds per unit), smallest first.
TIME_UNITS = (("ns", 1e-6), ("µs", 1e-3), ("ms", 1.0), ("s", 1e3))


def _finite(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def time_unit(ms) -> tuple[str, float]:
    """(name, milliseconds per unit) of the largest unit in which `ms` is at least 1 once
    rounded to 3 significant digits (so 999.96 µs reads 1 ms, not 1000 µs); ns below that."""
    if not _finite(ms) or ms <= 0:
        return TIME_UNITS[2]
    rounded = float(f"{ms:.3g}")
    chosen = TIME_UNITS[0]
    for name, scale in TIME_UNITS:
        if rounded >= scale:
            chosen = (name, scale)
    return chosen


def format_time(ms) -> str:
    """A time given in milliseconds, 3 significant digits in its own unit: '1.05 µs', '88 ms',
    '1.41 s'; '-' for a missing one."""
    if not _finite(ms):
        return "-"
    name, scale = time_unit(ms)
    return f"{ms / scale:.3g} {name}"


def format_time_spread(p50, p20, p80) -> str:
    """A median with its p20-p80 spread, all in the median's unit: '1.05 [1.03-1.08] µs'."""
    if not _finite(p50):
        return "-"
    name, scale = time_unit(p50)
    spread = f" [{p20 / scale:.3g}-{p80 / scale:.3g}]" if _finite(p20) and _finite(p80) else ""
    return f"{p50 / scale:.3g}{spread} {name}"


def format_bytes(v) -> str:
    """Bytes in binary units: '16.00 GiB', '64.0 MiB', '512 B'; '-' for a missing value."""
    if not _finite(v):
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= size:
            return f"{v / size:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{v:.0f} B"
