"""softlight: fused Triton kernels for softmax, log-softmax, cross-entropy, token log-probabilities and divergences.

    import softlight
    y = softlight.softmax(x, dim=-1)          # like torch.softmax, differentiable
    logp = softlight.log_softmax(x, temperature=0.7)
    loss = softlight.cross_entropy(logits, target, label_smoothing=0.1, z_loss=1e-4)
    loss = softlight.linear_cross_entropy(hidden, lm_head.weight, labels)   # never holds the logits
    logp, entropy = softlight.token_logprobs(logits, ids, return_entropy=True)
    kl = softlight.distillation_loss(student_logits, teacher_logits)         # KL(p_t || p_s), exact

softlight.reference is the float64 NumPy reference the kernels are checked against, and
softlight.bench the benchmark and report tools.
"""

from .cross_entropy_op import CrossEntropyLoss, cross_entropy
from .distillation_op import DistillationLoss, distillation_loss
from .launch import INTERPRETED, LaunchPolicy, launch_config, use_policy
from .linear_cross_entropy_op import LinearCrossEntropyLoss, linear_cross_entropy
from .linear_distillation_op import LinearDistillationLoss, linear_distillation_loss
from .linear_token_logprobs_op import linear_token_logprobs
from .softmax_op import LogSoftmax, Softmax, log_softmax, softmax
from .swap import swap_modules
from .token_logprobs_op import token_logprobs

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
    "distillation_loss",
    "DistillationLoss",
    "linear_distillation_loss",
    "LinearDistillationLoss",
    "swap_modules",
    "launch_config",
    "use_policy",
    "LaunchPolicy",
    "INTERPRETED",
]
