"""softlight: fused Triton kernels for softmax, log-softmax and cross-entropy.

    import softlight
    y = softlight.softmax(x, dim=-1)          # like torch.softmax, differentiable
    logp = softlight.log_softmax(x, temperature=0.7)

softlight.reference is the float64 NumPy reference the kernels are checked against, and
softlight.bench the benchmark and report tools.
"""

from .launch import INTERPRETED, launch_config
from .fused_softmax import LogSoftmax, Softmax, log_softmax, softmax

__version__ = "0.1.0"

__all__ = ["softmax", "log_softmax", "Softmax", "LogSoftmax", "launch_config", "INTERPRETED"]
