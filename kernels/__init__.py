"""softlight: fused Triton kernels for softmax, log-softmax, cross-entropy and token log-probabilities.

    import softlight
    y = softlight.softmax(x, dim=-1)          # like torch.softmax, differentiable
    logp = softlight.log_softmax(x, temperature=0.7)
    loss = softlight.cross_entropy(logits, target, label_smoothing=0.1, z_loss=1e-4)
    loss = softlight.linear_cross_entropy(hidden, lm_head.weight, labels)   # never holds the logits
    logp, entropy = softlight.token_logprobs(logits, ids, return_entropy=True)

softlight.reference is the float64 NumPy reference the kernels are checked against, and
softlight.bench the benchmark and report tools.
"""

from .launch import INTERPRETED, launch_config
from .fused_cross_entropy import CrossEntropyLoss, cross_entropy
from .fused_linear_cross_entropy import LinearCrossEntropyLoss, linear_cross_entropy
from .fused_softmax import LogSoftmax, Softmax, log_softmax, softmax
from .fused_token_logprobs import linear_token_logprobs, token_logprobs
from .swap import swap_modules

__version__ = "0.1.0"

__all__ = [
    "softmax",
    "log_softmax",
    "Softmax",
    "LogSoftmax",
    "cross_entropy",
    "CrossEntropyLoss",
    "linear_cross_entropy",
    "LinearCrossEntropyLoss",
    "token_logprobs",
    "linear_token_logprobs",
    "swap_modules",
    "launch_config",
    "INTERPRETED",
]
