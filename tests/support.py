"""Helpers shared by the tests: comparing a tensor with the float64 reference."""

import numpy as np
import torch

from softlight.reference import TOLERANCE, relative_error

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def assert_close(out: torch.Tensor, ref, dtype: torch.dtype | None = None, what: str = ""):
    """out within the tolerance of its dtype (or `dtype`) of the float64 reference `ref`."""
    name = dtype_name(dtype or out.dtype)
    err = relative_error(to_numpy(out), ref)
    assert err <= TOLERANCE[name], f"{what} relative error {err:.3e} > {TOLERANCE[name]:.0e} ({name})"
    return err


def rounded(ref, dtype: torch.dtype) -> np.ndarray:
    """The float64 reference rounded to `dtype`: the best answer that dtype can hold (a value
    below its range becomes 0, where a relative error against the unrounded one would be 1)."""
    return torch.from_numpy(np.asarray(ref, dtype=np.float64)).to(dtype).double().numpy()


def incoming_gradient(like: torch.Tensor) -> torch.Tensor:
    """A random incoming gradient shaped like `like`: magnitude 0.5 to 2, either sign. Never near
    zero: a tiny one scales a float16 gradient into the subnormal range, where even the correctly
    rounded result misses the tolerance (test_matches_torch failed 1.5% of runs on randn's)."""
    sign = torch.randint(0, 2, like.shape, device=like.device) * 2 - 1
    return (sign * torch.empty(like.shape, device=like.device).uniform_(0.5, 2.0)).to(like.dtype)


def split_options(combo: dict, input_keys: tuple[str, ...]) -> tuple[dict, dict]:
    """A test's option combination split into what shapes the inputs (`input_keys`) and what is
    passed to the op."""
    make = {k: combo[k] for k in input_keys if k in combo}
    return make, {k: v for k, v in combo.items() if k not in make}


def combo_id(combo: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in combo.items()) or "plain"
