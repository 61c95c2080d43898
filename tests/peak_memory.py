"""Run one loss, forward and backward, and print the peak resident memory it added, as JSON.

    python -P tests/peak_memory.py fused|unfused N H V

Linux only: memory is read from /proc/self/status. After imports, the inputs and a small warm-up
run of the same path, the peak ("high water mark", VmHWM) is reset to the current resident size
(writing 5 to /proc/self/clear_refs) and that size kept as `baseline_kib`; `peak_kib` is VmHWM
after the full-size run. (getrusage's ru_maxrss would not do: it carries over across exec the peak
of the process that started this one, a test runner of many hundred MiB.) Kernels run through
Triton's interpreter on the CPU.
"""

import gc
import json
import os
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


def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def main(path, n, h, v):
    torch.manual_seed(0)
    hidden = torch.randn(n, h)
    weight = torch.randn(v, h) / h**0.5
    target = torch.randint(0, v, (n,))
    run(path, hidden[:4], weight, target[:4])  # warm-up: everything but the size
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    baseline = status_kib("VmRSS")
    loss, grad_hidden, grad_weight = run(path, hidden, weight, target)
    peak = status_kib("VmHWM")
    print(json.dumps(dict(path=path, baseline_kib=baseline, peak_kib=peak, loss=loss,
                          grad_hidden_norm=grad_hidden.norm().item(), grad_weight_norm=grad_weight.norm().item())))


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:5]))
