"""Test configuration: without a GPU, the kernels run on CPU tensors through Triton's interpreter.

TRITON_INTERPRET must be set before triton is imported (triton.jit reads it when a kernel is
decorated), so it is set here, before anything imports softlight. On a GPU machine the suite
runs the compiled kernels on CUDA tensors; TRITON_INTERPRET=1 in the environment forces the
interpreter there too.
"""

import contextlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import softlight  # noqa: E402  (after TRITON_INTERPRET is settled)

DEVICE = "cpu" if softlight.INTERPRETED else "cuda"


def pytest_report_header(config):
    mode = "Triton interpreter on CPU tensors" if softlight.INTERPRETED else f"compiled kernels on {torch.cuda.get_device_name()}"
    return f"softlight kernels: {mode}"


def pytest_collection_modifyitems(config, items):
    if softlight.INTERPRETED or not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU with compiled kernels")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def launch_policy():
    """Change knobs of the launch policy for the rest of the test: launch_policy(row_block_limit=16)
    forces the streamed path, launch_policy(target_programs=64) the split one."""
    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(softlight.use_policy(**changes))


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Fresh random inputs on every run, as the numerics contract asks; a failing test shows its
    seed in its captured output, and SOFTLIGHT_SEED=<seed> replays it."""
    seed = int(os.environ.get("SOFTLIGHT_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"SOFTLIGHT_SEED={seed}")
    torch.manual_seed(seed)


# Property-based tests: few, small examples by default so the interpreter keeps the suite
# quick; HYPOTHESIS_PROFILE=long for a thorough run.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
