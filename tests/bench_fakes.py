"""A stand-in for the GPU timer, so the benchmark's whole measurement loop runs on the CPU.

Its numbers are fixed, not measured: tables made with it stay in memory or under tmp_path and
carry its name, "fake timer (not measured)", as their device.
"""

from softlight.bench.measure import Timing


class FakeDevice:
    """Calls each function once per timing, as a timer would, and reports fixed numbers."""

    name = "fake timer (not measured)"
    torch_device = "cpu"
    ceiling_bytes = 2**12

    def __init__(self, ms=2.0, peak=4096):
        self.ms, self.peak, self.timed = ms, peak, 0

    def time(self, fn):
        fn()
        self.timed += 1
        return Timing(self.ms, 0.9 * self.ms, 1.2 * self.ms)

    def peak_memory(self, fn):
        fn()
        return self.peak
