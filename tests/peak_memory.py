"""Run one loss, forward and backward, and print the process's peak resident memory as JSON.

    python -P tests/peak_memory.py fused|unfused N H V

Run in a fresh process per path (ru_maxrss only ever grows). `baseline_kib` is the peak after
imports, the inputs and a small warm-up run of the same path; `peak_kib` the peak after the
full-size run. Kernels run through Triton's interpreter on the CPU.
"""

import json
import os
import resource
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import softlight  # noqa: E402


def run(path, hidden, weight, target):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    if path == "fused":
        loss = softlight.linear_cross_entropy(h, w, target, chunk_size=64)  # as tests/test_memory.py says
    else:  # what training code runs today: the logits, then torch's cross-entropy on them
        loss = F.cross_entropy(F.linear(h, w), target)
    loss.backward()
    return loss.item(), h.grad, w.grad


def main(path, n, h, v):
    torch.manual_seed(0)
    hidden = torch.randn(n, h)
    weight = torch.randn(v, h) / h**0.5
    target = torch.randint(0, v, (n,))
    run(path, hidden[:4], weight, target[:4])  # warm-up: everything but the size
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss, grad_hidden, grad_weight = run(path, hidden, weight, target)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(path=path, baseline_kib=baseline, peak_kib=peak, loss=loss,
                          grad_hidden_norm=grad_hidden.norm().item(), grad_weight_norm=grad_weight.norm().item())))


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:5]))
