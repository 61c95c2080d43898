"""softlight: fused Triton kernels for softmax, log-softmax and cross-entropy.

    import softlight
    y = softlight.softmax(x, dim=-1)          # like torch.softmax, differentiable
    logp = softlight.log_softmax(x, temperature=0.7)
    loss = softlight.cross_entropy(logits, target, label_smoothing=0.1, z_loss=1e-4)

softlight.reference is the float64 NumPy reference the kernels are checked against, and
softlight.bench the benchmark and report tools.
"""

from .launch import INTERPRETED, launch_config
from .fused_cross_entropy import CrossEntropyLoss, cross_entropy
from .fused_softmax import LogSoftmax, Softmax, log_softmax, softmax
from .swap import swap_modules

__version__ = "0.1.0"

__all__ = [
    "softmax",
    "log_softmax",
    "Softmax",
    "LogSoftmax",
    "cross_entropy",
    "CrossEntropyLoss",
    "swap_modules",
    "launch_config",
    "INTERPRETED",
]
