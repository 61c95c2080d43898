"""softlight's ops as torch custom ops: opcheck, torch.compile with no graph break, CUDA graphs."""

import pytest
import torch
import torch.nn.functional as F

import softlight
from softlight.cross_entropy_rows import CrossEntropyOptions
from softlight.linear_cross_entropy_op import LinearCrossEntropyOptions
from softlight.linear_token_logprobs_op import LinearTokenLogprobsOptions
from softlight.softmax_rows import SoftmaxOptions
from softlight.token_logprobs_rows import TokenLogprobsOptions

OPS = torch.ops.softlight


def sample_inputs(device):
    x = torch.randn(4, 33, device=device, requires_grad=True)
    target = torch.tensor([0, 5, -100, 32], device=device)
    weight = torch.rand(33, device=device)
    return x, target, weight


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_opcheck_softmax_ops(name, device):
    x = torch.randn(3, 17, device=device, requires_grad=True)
    op = getattr(OPS, name).default
    log = name == "log_softmax"
    for t, options in ((x, SoftmaxOptions(1, torch.float32, torch.float32, 1.0, log, False)),
                       (x.detach().t(), SoftmaxOptions(0, torch.bfloat16, torch.float32, 0.5, log, True)),
                       (x, SoftmaxOptions(0, torch.float32, torch.float32, 2.0, log, True))):
        torch.library.opcheck(op, (t, options.encode()))
    y = getattr(softlight, name)(x)
    options = SoftmaxOptions(1, torch.float32, torch.float32, 1.0, log, False).encode()
    torch.library.opcheck(getattr(OPS, f"{name}_backward").default, (y.detach(), torch.randn_like(y), options))


def test_opcheck_cross_entropy_ops(device):
    x, target, weight = sample_inputs(device)
    probs = torch.softmax(torch.randn(4, 33, device=device), 1)
    op = OPS.cross_entropy.default
    for args in ((x, target, None, CrossEntropyOptions()),
                 (x, target, weight, CrossEntropyOptions(-100, 0.1, 0.5, 1e-3, 20.0, "none")),
                 (x, probs, weight, CrossEntropyOptions(-100, 0.2, 1.0, 0.0, None, "sum", "zero"))):
        torch.library.opcheck(op, (*args[:3], args[3].encode()))
    options = CrossEntropyOptions(-100, 0.1, 1.0, 1e-3, 20.0, "mean").encode()
    with torch.no_grad():
        loss, lse, *stats = op(x, target, weight, options)
    for grad_lse in (None, torch.randn_like(lse)):
        args = (torch.ones_like(loss), grad_lse, x.detach(), target, weight, *stats, options)
        torch.library.opcheck(OPS.cross_entropy_backward.default, args)
        torch.library.opcheck(OPS.cross_entropy_backward_inplace.default, (*args[:2], x.detach().clone(), *args[3:]))


def test_opcheck_token_logprobs_ops(device):
    logits = torch.randn(2, 3, 40, device=device, requires_grad=True)
    ids = torch.randint(0, 40, (2, 3), device=device)
    for entropy in (False, True):
        options = TokenLogprobsOptions(0.7, entropy).encode()
        torch.library.opcheck(OPS.token_logprobs.default, (logits, ids, options))
        with torch.no_grad():
            logp, _, *stats = OPS.token_logprobs(logits, ids, options)
        grad = torch.randn_like(logp)
        torch.library.opcheck(OPS.token_logprobs_backward.default,
                              (grad, grad if entropy else None, logits.detach(), ids, *stats, options))


def test_opcheck_linear_ops(device):
    hidden = torch.randn(2, 3, 8, device=device, requires_grad=True)
    weight = torch.randn(30, 8, device=device, requires_grad=True)
    bias = torch.randn(30, device=device, requires_grad=True)
    target = torch.randint(0, 30, (2, 3), device=device)
    target[0, 1] = -100
    for reduction in ("mean", "none"):
        ce = CrossEntropyOptions(label_smoothing=0.1, z_loss=1e-3, reduction=reduction)
        options = LinearCrossEntropyOptions(**vars(ce), rows=4, needs=(True, True, True)).encode()
        total = (target != -100).sum().float() if reduction == "mean" else None
        torch.library.opcheck(OPS.linear_cross_entropy.default, (hidden, weight, bias, target, None, total, options))
        with torch.no_grad():
            out = OPS.linear_cross_entropy(hidden, weight, bias, target, None, total, options)
        torch.library.opcheck(OPS.linear_cross_entropy_backward.default,
                              (torch.randn(6, device=device), torch.randn(2, 3, device=device), hidden.detach(),
                               weight.detach(), bias.detach(), target, None, *out[5:], options))
    options = LinearTokenLogprobsOptions(1.0, True, rows=4, needs=(True, True, True)).encode()
    torch.library.opcheck(OPS.linear_token_logprobs.default, (hidden, weight, bias, target.clamp(0), options))
    with torch.no_grad():
        logp, _, *stats = OPS.linear_token_logprobs(hidden, weight, bias, target.clamp(0), options)
    torch.library.opcheck(OPS.linear_token_logprobs_backward.default,
                          (torch.randn_like(logp), None, hidden.detach(), weight.detach(), bias.detach(),
                           target.clamp(0), *stats, options))


def _every_public_function(device):
    """(name, function of the inputs that returns a scalar, inputs): each public function, with
    its gradient paths (in-place backward, entropy, the linear forms) exercised."""
    x = torch.randn(6, 40, device=device)
    target = torch.randint(0, 40, (6,), device=device)
    target[2] = -100
    hidden = torch.randn(6, 8, device=device)
    weight = torch.randn(40, 8, device=device) * 0.3
    ids = target.clamp(0)
    return [
        ("softmax", lambda x: (softlight.softmax(x, -1, temperature=0.8) ** 2).sum(), (x,)),
        ("log_softmax", lambda x: softlight.log_softmax(x, 0, masked_rows="zero").sum(), (x,)),
        ("cross_entropy", lambda x: softlight.cross_entropy(x * 1.0, target, label_smoothing=0.1, z_loss=1e-3), (x,)),
        ("cross_entropy inplace_backward",
         lambda x: softlight.cross_entropy(x * 1.0, target, softcap=5.0, inplace_backward=True), (x,)),
        ("cross_entropy return_lse",
         lambda x: sum(t.sum() for t in softlight.cross_entropy(x, target, z_loss=1e-2, return_lse=True,
                                                                return_z_loss=True)), (x,)),
        ("token_logprobs", lambda x: softlight.token_logprobs(x, ids, temperature=0.9).sum(), (x,)),
        ("token_logprobs entropy", lambda x: sum(t.sum() for t in softlight.token_logprobs(x, ids, return_entropy=True)),
         (x,)),
        ("linear_cross_entropy", lambda h, w: softlight.linear_cross_entropy(h, w, target, chunk_size=4), (hidden, weight)),
        ("linear_cross_entropy none",
         lambda h, w: softlight.linear_cross_entropy(h, w, target, reduction="none", return_lse=True)[1].sum(),
         (hidden, weight)),
        ("linear_token_logprobs",
         lambda h, w: sum(t.sum() for t in softlight.linear_token_logprobs(h, w, ids, return_entropy=True,
                                                                          chunk_size=4)), (hidden, weight)),
    ]


@pytest.mark.parametrize("case", range(10))
def test_every_public_function_compiles_with_fullgraph(case, device):
    """torch.compile(fullgraph=True) traces each public function (and its backward) with no
    graph break; values and gradients equal eager's."""
    torch._dynamo.reset()
    name, fn, inputs = _every_public_function(device)[case]
    eager_in = [t.clone().requires_grad_() for t in inputs]
    compiled_in = [t.clone().requires_grad_() for t in inputs]
    expected = fn(*eager_in)
    expected_grads = torch.autograd.grad(expected, eager_in)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(*compiled_in)
    grads = torch.autograd.grad(got, compiled_in)
    torch.testing.assert_close(got, expected, msg=name)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, msg=name)


class TinyClassifier(torch.nn.Module):
    """A linear layer feeding every softlight op, as a model would use them."""

    def __init__(self, features=16, classes=33):
        super().__init__()
        self.linear = torch.nn.Linear(features, classes)

    def forward(self, h, target):
        logits = self.linear(h)
        probs = softlight.softmax(logits, -1, temperature=0.9)
        logp = softlight.log_softmax(logits, -1)
        return (softlight.cross_entropy(logits, target, label_smoothing=0.1, z_loss=1e-4)
                + 1e-2 * (probs * logp).sum(-1).mean())


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_compile_fullgraph(backend, device):
    """fullgraph=True fails on any graph break; the compiled loss and gradients match eager."""
    torch._dynamo.reset()
    model = TinyClassifier().to(device)
    h = torch.randn(8, 16, device=device)
    target = torch.randint(0, 33, (8,), device=device)
    target[3] = -100
    eager_loss = model(h, target)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    loss = compiled(h, target)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, eager_loss)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_compiled_graph_calls_softlight_ops(device):
    """With aot_eager the forward and backward graphs hold our ops (not a decomposition)."""
    torch._dynamo.reset()
    seen = []

    def backend(gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def record(graph, _):
            seen.extend(str(n.target) for n in graph.graph.nodes if n.op == "call_function")
            return make_boxed_func(graph.forward)

        return aot_autograd(fw_compiler=record, bw_compiler=record)(gm, example_inputs)

    model = TinyClassifier().to(device)
    h = torch.randn(8, 16, device=device)
    target = torch.randint(0, 33, (8,), device=device)
    loss = torch.compile(model, fullgraph=True, backend=backend)(h, target)
    loss.backward()
    for name in ("softmax", "log_softmax", "cross_entropy", "softmax_backward", "log_softmax_backward",
                 "cross_entropy_backward"):
        assert any(f"softlight.{name}.default" == s for s in seen), (name, seen)


def test_double_backward_through_cross_entropy(device):
    x = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.tensor([0, 5, -100, 2], device=device)
    w = torch.rand(6, dtype=torch.float64, device=device)
    assert torch.autograd.gradgradcheck(
        lambda t: softlight.cross_entropy(t, target, w, label_smoothing=0.2, z_loss=1e-2, softcap=3.0, temperature=0.8),
        (x,))
    q = torch.softmax(torch.randn(4, 6, dtype=torch.float64, device=device), 1)
    assert torch.autograd.gradgradcheck(lambda t: softlight.cross_entropy(t, q, reduction="sum"), (x,))


@pytest.mark.gpu
def test_cuda_graph_captures_a_training_step():
    """No host-device synchronisation in forward or backward: a whole step replays as a graph."""
    model = TinyClassifier().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    h = torch.randn(64, 16, device="cuda")
    target = torch.randint(0, 33, (64,), device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up: compile the kernels, allocate the grads
            opt.zero_grad(set_to_none=False)
            model(h, target).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        static_loss = model(h, target)
        static_loss.backward()
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    expected = TinyClassifier().cuda()
    expected.load_state_dict(model.state_dict())
    graph.replay()
    torch.cuda.synchronize()
    eager_loss = expected(h, target)
    torch.testing.assert_close(static_loss, eager_loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_torch_functional_equivalents(device):
    """The ops registered under torch.ops.softlight give what the public functions give."""
    x, target, weight = sample_inputs(device)
    options = SoftmaxOptions(1, torch.float32, torch.float32).encode()
    torch.testing.assert_close(OPS.softmax(x, options), softlight.softmax(x))
    torch.testing.assert_close(OPS.cross_entropy(x, target, weight, CrossEntropyOptions().encode())[0],
                               F.cross_entropy(x, target, weight))


def test_modules_take_torchs_constructor_arguments(device):
    w = torch.rand(33, device=device)
    x, _, _ = sample_inputs(device)
    target = torch.tensor([0, 2, 9, 32], device=device)
    for args, kwargs in (((w, None, 2, None, "sum", 0.1), {}), ((), dict(weight=w, ignore_index=0, reduction="none"))):
        ours, theirs = softlight.CrossEntropyLoss(*args, **kwargs), torch.nn.CrossEntropyLoss(*args, **kwargs)
        torch.testing.assert_close(ours(x, target), theirs(x, target))
    with pytest.warns(UserWarning, match="reduction='sum'"):
        legacy = softlight.CrossEntropyLoss(size_average=False)
    assert legacy.reduction == "sum"
    assert softlight.Softmax(1).dim == torch.nn.Softmax(1).dim


def test_swap_modules_replaces_and_says_what(device, capsys):
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 33),
        torch.nn.Sequential(torch.nn.LogSoftmax(dim=-1)),
        torch.nn.Softmax(dim=1),
    ).to(device)
    model.loss = torch.nn.CrossEntropyLoss(weight=torch.rand(33, device=device), label_smoothing=0.1, ignore_index=3)
    h = torch.randn(5, 8, device=device)
    target = torch.tensor([0, 3, 7, 32, 3], device=device)
    before = model.loss(model[0](h), target)
    replaced = softlight.swap_modules(model, verbose=True)
    assert sorted(replaced) == [
        "1.0: torch.nn.LogSoftmax -> softlight.LogSoftmax",
        "2: torch.nn.Softmax -> softlight.Softmax",
        "loss: torch.nn.CrossEntropyLoss -> softlight.CrossEntropyLoss",
    ]
    assert "replaced 3 module(s)" in capsys.readouterr().out
    assert isinstance(model.loss, softlight.CrossEntropyLoss) and model.loss.ignore_index == 3
    assert repr(model[2]) == "softlight.Softmax(dim=1)" and repr(torch.nn.Softmax(dim=1)) == "Softmax(dim=1)"
    torch.testing.assert_close(model.loss(model[0](h), target), before)
    model.extra = torch.nn.Softmax(dim=0)
    assert softlight.swap_modules(model) == ["extra: torch.nn.Softmax -> softlight.Softmax"]
    assert capsys.readouterr().out == ""  # quiet by default
    assert softlight.swap_modules(model) == []
    with pytest.raises(TypeError, match="model is itself a Softmax"):
        softlight.swap_modules(torch.nn.Softmax(-1))
