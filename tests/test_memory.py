"""The memory claim of linear_cross_entropy, measured: the peak resident memory that a forward
and backward of N x V logits adds to a process, fused against the unfused torch path (F.linear,
then F.cross_entropy), each in a fresh process (tests/peak_memory.py says how it is read).

glibc's malloc is told to serve every block over 64 KiB by mmap (MALLOC_MMAP_THRESHOLD_), so a
freed tensor leaves the resident set at once instead of staying in the heap; both paths run
under the same setting. Both hold the weight's gradient and its fp32 accumulator (small here:
H is small so that the logits dominate). On the interpreter, the last chunk a kernel saw can
outlive the launch until Python's cycle collector runs, so up to two chunks may be counted here
(never on a GPU).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

N_TOKENS, N_HIDDEN, N_VOCAB = 384, 16, 32768  # fp32 logits of 48 MiB; the weight is 2 MiB
CHUNK_ROWS = 64  # as tests/peak_memory.py passes: chunks of 8 MiB


def measure(path):
    env = dict(os.environ, TRITON_INTERPRET="1", MALLOC_MMAP_THRESHOLD_="65536")
    script = Path(__file__).with_name("peak_memory.py")
    run = subprocess.run([sys.executable, "-P", str(script), path, str(N_TOKENS), str(N_HIDDEN), str(N_VOCAB)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads Linux's /proc/self/status")
def test_fused_linear_cross_entropy_never_holds_the_logits():
    unfused, fused = measure("unfused"), measure("fused")
    logits_kib = N_TOKENS * N_VOCAB * 4 / 1024
    unfused_extra = unfused["peak_kib"] - unfused["baseline_kib"]
    fused_extra = fused["peak_kib"] - fused["baseline_kib"]
    print(f"logits {logits_kib / 1024:.1f} MiB; memory added by forward + backward: unfused "
          f"{unfused_extra / 1024:.1f} MiB, fused {fused_extra / 1024:.1f} MiB (baselines "
          f"{unfused['baseline_kib'] / 1024:.1f} and {fused['baseline_kib'] / 1024:.1f} MiB)")
    # Both computed the same thing.
    assert abs(fused["loss"] - unfused["loss"]) <= 1e-5 * abs(unfused["loss"])
    for name in ("grad_hidden_norm", "grad_weight_norm"):
        assert abs(fused[name] - unfused[name]) <= 1e-4 * unfused[name], name
    # The measurement sees the logits: the unfused path holds them (and more: their log-softmax
    # and their gradient).
    assert unfused_extra >= logits_kib
    # The fused path holds a chunk or two of them, and adds less than the unfused path by more
    # than the logits' size.
    assert fused_extra <= logits_kib / 2
    assert unfused_extra - fused_extra >= logits_kib
