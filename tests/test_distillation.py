"""softlight.distillation_loss and linear_distillation_loss against the float64 reference, torch's
formulas in float64, and 40-digit answers where float64's own formulas lose digits."""

import math

import mpmath
import pytest
import torch
import torch.nn.functional as F

import softlight
from softlight import reference as ref
from softlight.distillation_rows import DistillationOptions
from softlight.linear_distillation_op import LinearDistillationOptions
from support import DTYPES, assert_close, to_numpy

DIVERGENCES = ("kl", "reverse_kl", "jsd")
LOSS_TOLERANCE = 1e-5  # the loss is fp32 whatever the logits dtype, within this of float64
INF = float("inf")
OPS = torch.ops.softlight


def random_gradient(like):
    """Incoming gradients of magnitude 0.5 to 2 with random signs."""
    sign = torch.randint(0, 2, like.shape, device=like.device) * 2 - 1
    return sign * torch.empty_like(like).uniform_(0.5, 2.0)


def check_against_reference(student, teacher, target=None, teacher_grad=True, **options):
    """Loss within LOSS_TOLERANCE of the reference on the same logits, both gradients within their
    dtypes' tolerance, for a random incoming gradient (one per row for reduction "none")."""
    s = student.detach().clone().requires_grad_()
    t = teacher.detach().clone().requires_grad_(teacher_grad)
    loss = softlight.distillation_loss(s, t, target=target, **options)
    acc = torch.float64 if torch.float64 in (student.dtype, teacher.dtype) else torch.float32
    assert loss.dtype == acc
    np_target = None if target is None else target.cpu().numpy()
    want = ref.distillation(to_numpy(student), to_numpy(teacher), target=np_target, **options)
    err = ref.relative_error(to_numpy(loss), want)
    assert err <= LOSS_TOLERANCE, f"loss relative error {err:.2e}"
    grad = random_gradient(loss)
    grads = torch.autograd.grad(loss, (s, t) if teacher_grad else (s,), grad)
    expected = ref.distillation_backward(to_numpy(student), to_numpy(teacher), to_numpy(grad),
                                                      target=np_target, **options)
    for name, got, want in zip(("student", "teacher"), grads, expected):
        assert got.dtype == (student if name == "student" else teacher).dtype and got.shape == student.shape
        assert_close(got, want, what=f"d {name}")
    return loss


def make_pair(shape, dtype, device, scale=3.0, teacher_dtype=None):
    student = (torch.randn(shape, device=device) * scale).to(dtype)
    teacher = (torch.randn(shape, device=device) * scale).to(teacher_dtype or dtype)
    return student, teacher


def rows_target(shape, device, ignored=(1,)):
    """Class indices that only mark rows: those at `ignored` (flat row numbers) are skipped."""
    target = torch.randint(0, 50, shape, device=device)
    target.view(-1)[list(ignored)] = -100
    return target


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_against_reference(divergence, dtype, device):
    student, teacher = make_pair((3, 4, 517), dtype, device)
    check_against_reference(student, teacher, rows_target((3, 4), device, (1, 6)), divergence=divergence,
                            temperature=0.7 if dtype == torch.float32 else 1.0, reduction="none")


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_reductions_and_skipped_rows(divergence, device):
    student, teacher = make_pair((6, 40), torch.float32, device)
    target = rows_target((6,), device, (0, 4))
    for reduction in ("mean", "sum"):
        check_against_reference(student, teacher, target, divergence=divergence, reduction=reduction, beta=0.3)
    check_against_reference(student, teacher, None, divergence=divergence)
    # Every row skipped: the mean is 0/0 = NaN, as torch's losses; the gradients are 0.
    s = student.clone().requires_grad_()
    loss = softlight.distillation_loss(s, teacher, divergence=divergence, target=torch.full((6,), -100, device=device))
    assert torch.isnan(loss)
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
    assert softlight.distillation_loss(student, teacher, target=torch.full((6,), 7, device=device), ignore_index=7,
                                       reduction="sum") == 0


def exact_divergence(student_row, teacher_row, divergence, beta=0.5):
    """The divergence of one row in 40-digit arithmetic (finite logits)."""
    with mpmath.workdps(40):
        zs, zt = ([mpmath.mpf(float(v)) for v in row] for row in (student_row, teacher_row))
        ls = [v - mpmath.log(mpmath.fsum(mpmath.exp(u) for u in zs)) for v in zs]
        lt = [v - mpmath.log(mpmath.fsum(mpmath.exp(u) for u in zt)) for v in zt]
        terms = []
        for a, b in zip(lt, ls):
            if divergence == "kl":
                terms.append(mpmath.exp(a) * (a - b))
            elif divergence == "reverse_kl":
                terms.append(mpmath.exp(b) * (b - a))
            else:
                log_m = mpmath.log(beta * mpmath.exp(a) + (1 - beta) * mpmath.exp(b))
                terms.append(beta * mpmath.exp(a) * (a - log_m) + (1 - beta) * mpmath.exp(b) * (b - log_m))
        return float(mpmath.fsum(terms))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_nearly_equal_distributions_keep_their_digits(divergence, device):
    """Rows 1e-5 apart (a KL near 1e-11): the per-class terms, each >= 0, and the Newton step on the
    normalisers' log-ratio keep the fp32 loss within a few ulps of the 40-digit answer, where the
    textbook sum of p_t (log p_t - log p_s) keeps no digit in fp32 (and few in float64); the gradient
    keeps fp32's digits too. Equal rows give exactly 0. With a common offset of 1000 too."""
    student = torch.randn(2, 120, device=device) * 4
    teacher = (student + 1e-5 * torch.randn_like(student)).float()
    teacher[1] += 1000.0
    loss = softlight.distillation_loss(student, teacher, divergence=divergence, reduction="none")
    exact = torch.tensor([exact_divergence(student[i].tolist(), teacher[i].tolist(), divergence) for i in range(2)])
    assert 1e-13 < exact.min() and exact.max() < 1e-9
    # 16 fp32 ulps; measured over 145 seeds: at most 2.8e-7 (the KL), 2.1e-7 (the JSD).
    assert ((loss.cpu().double() - exact).abs() / exact).max() < 1e-6, (loss, exact)
    if divergence != "jsd":
        first, second = (teacher, student) if divergence == "kl" else (student, teacher)
        textbook = F.kl_div(torch.log_softmax(second, -1), torch.log_softmax(first, -1), log_target=True,
                            reduction="none").sum(-1)
        assert ((textbook.cpu().double() - exact).abs() / exact).max() > 1e-2  # what the unfused fp32 path gives
    s = student.clone().requires_grad_()
    softlight.distillation_loss(s, teacher, divergence=divergence, reduction="sum").backward()
    # The float64 formulas are exact enough for the gradient (first order in the difference).
    expected, _ = ref.distillation_backward(to_numpy(student), to_numpy(teacher), 1.0,
                                                         divergence=divergence, reduction="sum")
    assert ref.relative_error(to_numpy(s.grad), expected) < 1e-6
    same = softlight.distillation_loss(s, student, divergence=divergence, reduction="none")
    assert torch.equal(same, torch.zeros_like(same))
    s.grad = None
    same.sum().backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_masked_classes_one_hot_rows_and_infinite_divergences(device):
    """-inf logits are masked classes. Masked in both: they add nothing. Masked in the teacher only:
    KL(p_t || p_s) finite, KL(p_s || p_t) = +inf (the exact answer). A one-hot teacher: the KL is
    -log p_s of its class. The student's gradient of a KL is finite even where the KL is +inf."""
    student, teacher = make_pair((5, 64), torch.float32, device)
    student[0, :20] = teacher[0, :20] = -INF      # masked in both
    teacher[1, 10:40] = -INF                      # masked in the teacher only
    student[2, :5] = -INF                         # masked in the student only
    teacher[3, :] = -INF                          # a one-hot teacher
    teacher[3, 17] = 2.0
    teacher[4, 1::2] = -INF                       # half masked in the teacher, the student one-hot
    student[4, :] = -INF
    student[4, 6] = 0.0
    for divergence in DIVERGENCES:
        loss = check_against_reference(student, teacher, divergence=divergence, reduction="none")
        assert torch.isfinite(loss[0]) and torch.isfinite(loss[3]) == (divergence != "reverse_kl")
        assert torch.isinf(loss[2]) == (divergence == "kl") and torch.isinf(loss[1]) == (divergence == "reverse_kl")
        if divergence == "jsd":
            assert torch.isfinite(loss).all()
    kl = softlight.distillation_loss(student[3:4], teacher[3:4], reduction="sum")
    torch.testing.assert_close(kl, -torch.log_softmax(student[3], -1)[17])


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_huge_logits_stay_finite(divergence, device):
    """Logits up to a quarter of fp32's largest value; and logits near it with a spread of 1e35 at
    temperature 0.05, where x / T overflows fp32 but x - max does not: finite divergences and
    gradients, as the reference's (the unshifted textbook formula overflows)."""
    big = torch.finfo(torch.float32).max / 4
    student, teacher = make_pair((3, 50), torch.float32, device, scale=1.0)
    cases = ((student.clamp(-3, 3) * (big / 3), teacher.clamp(-3, 3) * (big / 3), 1.0),
             (big - 1e35 * student.abs(), big - 1e35 * teacher.abs(), 0.05))
    for s, t, temperature in cases:
        t[1] = s[1] * 0.999
        loss = check_against_reference(s, t, divergence=divergence, temperature=temperature, reduction="none")
        assert torch.isfinite(loss).all()


def test_non_finite_rows_match_torch(device):
    """A row all -inf, or with +inf or NaN, in either input gives NaN (loss and gradients), as
    torch's composition does; the other rows are unaffected."""
    nan = float("nan")
    student = torch.tensor([[-INF] * 4, [0.0, INF, 1.0, 2.0], [0.0, nan, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0],
                            [1.0, 2.0, 0.0, 1.0]], device=device, dtype=torch.float64)
    teacher = torch.tensor([[1.0, 0.0, 0.0, 2.0]] * 3 + [[-INF] * 4, [0.5, 0.0, 3.0, 1.0]], device=device,
                           dtype=torch.float64)
    s, st = student.clone().requires_grad_(), student.clone().requires_grad_()
    loss = softlight.distillation_loss(s, teacher, reduction="none")
    expected = F.kl_div(torch.log_softmax(st, -1), torch.log_softmax(teacher, -1), log_target=True,
                        reduction="none").sum(-1)
    torch.testing.assert_close(loss, expected, equal_nan=True)
    assert torch.isnan(loss).tolist() == [True, True, True, True, False]
    loss.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(s.grad, st.grad, equal_nan=True)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_streamed_rows_whose_max_grows_block_after_block(divergence, launch_policy, device):
    """Blocks of 64 columns: each row's maxima move block after block, one row has an offset of 5000,
    one is masked on its first 250 classes in both."""
    launch_policy(chunk=128)
    student = torch.linspace(-20, 20, 400, device=device).repeat(3, 1) + torch.randn(3, 400, device=device)
    teacher = student + torch.randn_like(student)
    student[1] += 5000.0
    student[2, :250] = teacher[2, :250] = -INF
    check_against_reference(student, teacher, divergence=divergence, temperature=0.9, reduction="none")


def test_matches_torch_formulas_in_float64(device):
    """The torch expressions users write, in float64: F.kl_div of log-softmaxes (log_target=True) and
    the JSD through log m = logsumexp; the temperature divides the logits and nothing multiplies
    the loss by T**2."""
    student, teacher = make_pair((4, 3, 37), torch.float64, device)
    temperature, beta = 1.7, 0.3
    for divergence in DIVERGENCES:
        s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
        st, tt = student.clone().requires_grad_(), teacher.clone().requires_grad_()
        ls, lt = torch.log_softmax(st / temperature, -1), torch.log_softmax(tt / temperature, -1)
        if divergence == "kl":
            expected = F.kl_div(ls, lt, log_target=True, reduction="sum") / 12
        elif divergence == "reverse_kl":
            expected = F.kl_div(lt, ls, log_target=True, reduction="sum") / 12
        else:
            log_m = torch.logsumexp(torch.stack([lt + math.log(beta), ls + math.log(1 - beta)]), 0)
            expected = (beta * F.kl_div(log_m, lt, log_target=True, reduction="sum")
                        + (1 - beta) * F.kl_div(log_m, ls, log_target=True, reduction="sum")) / 12
        loss = softlight.distillation_loss(s, t, divergence=divergence, beta=beta, temperature=temperature)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
        for got, want in zip(torch.autograd.grad(loss, (s, t)), torch.autograd.grad(expected, (st, tt))):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_strided_and_mixed_dtype_inputs(device):
    base = torch.randn(6, 200, 4, device=device)
    student = base.transpose(1, 2)  # (6, 4, 200), the vocabulary at stride 4
    teacher = torch.randn(4, 6, 200, device=device).to(torch.bfloat16).transpose(0, 1)
    target = rows_target((4, 6), device, (3,)).t()
    loss = check_against_reference(student, teacher, target, divergence="jsd", reduction="none")
    assert loss.shape == (6, 4) and loss.dtype == torch.float32


def test_gradcheck(device):
    student = torch.randn(3, 2, 6, dtype=torch.float64, device=device, requires_grad=True)
    teacher = torch.randn(3, 2, 6, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.tensor([[0, -100], [1, 2], [3, 4]], device=device)
    for divergence, reduction in (("kl", "none"), ("jsd", "mean")):
        assert torch.autograd.gradcheck(
            lambda s, t: softlight.distillation_loss(s, t, divergence=divergence, temperature=0.8, target=target,
                                                     reduction=reduction), (student, teacher), fast_mode=True)


def test_module(device):
    student, teacher = make_pair((5, 30), torch.float32, device)
    criterion = softlight.DistillationLoss("jsd", 0.4, temperature=2.0)
    assert "divergence='jsd', beta=0.4" in repr(criterion)
    torch.testing.assert_close(criterion(student, teacher),
                               softlight.distillation_loss(student, teacher, divergence="jsd", beta=0.4,
                                                           temperature=2.0))


# ---------------------------------------------------------------------------------------------
# linear_distillation_loss


def check_linear_against_reference(student, teacher, target=None, chunk_size=None, **options):
    """student, teacher: (hidden, weight, bias or None). Loss and every gradient wanted against the
    reference on the logits as the unfused composition rounds them."""
    leaves = [[None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in model]
              for model in (student, teacher)]
    (hs, ws, bs), (ht, wt, bt) = leaves
    loss = softlight.linear_distillation_loss(hs, ws, ht, wt, student_bias=bs, teacher_bias=bt, target=target,
                                              chunk_size=chunk_size, **options)
    np_models = [[None if t is None else to_numpy(t) for t in model] for model in (student, teacher)]
    logits = {name: to_numpy(F.linear(*model)) for name, model in zip(("student_logits", "teacher_logits"),
                                                                     (student, teacher))}
    np_target = None if target is None else target.cpu().numpy()
    args = (np_models[0][0], np_models[0][1], np_models[1][0], np_models[1][1])
    biases = dict(student_bias=np_models[0][2], teacher_bias=np_models[1][2])
    want = ref.linear_distillation(*args, **biases, **logits, target=np_target, **options)
    assert loss.dtype == torch.float32 and ref.relative_error(to_numpy(loss), want) <= LOSS_TOLERANCE
    grad = random_gradient(loss)
    wanted = [t for model in leaves for t in model if t is not None and t.requires_grad]
    grads = dict(zip(map(id, wanted), torch.autograd.grad(loss, wanted, grad)))
    expected = ref.linear_distillation_backward(*args, to_numpy(grad), **biases, **logits,
                                                             target=np_target, **options)
    for model, model_expected, side in zip(leaves, expected, ("student", "teacher")):
        for t, want, name in zip(model, model_expected, ("hidden", "weight", "bias")):
            if t is not None and t.requires_grad:
                assert_close(grads[id(t)], want, what=f"d {side} {name}")
    return loss


@pytest.mark.parametrize("divergence, dtype", [("kl", torch.float32), ("reverse_kl", torch.bfloat16),
                                               ("jsd", torch.float16)])
def test_linear_against_reference(divergence, dtype, device):
    """Hidden sizes 32 and 24, a student bias, the teacher's weight needing a gradient and its hidden
    states not, rows skipped, chunks of 7 tokens; reductions "mean" (gradients made in forward) and
    "none" (recomputed in backward)."""
    student = [torch.randn(2, 9, 32, device=device).to(dtype).requires_grad_(),
               (torch.randn(211, 32, device=device) * 0.35).to(dtype).requires_grad_(),
               (torch.randn(211, device=device) * 0.5).to(dtype).requires_grad_()]
    teacher = [torch.randn(2, 9, 24, device=device).to(dtype),
               (torch.randn(211, 24, device=device) * 0.4).to(dtype).requires_grad_(), None]
    target = rows_target((2, 9), device, (2, 11))
    for reduction in ("mean", "none"):
        check_linear_against_reference(student, teacher, target, chunk_size=7, divergence=divergence,
                                       temperature=0.9, reduction=reduction)


def test_linear_matches_distillation_loss_of_the_logits(device):
    hs = torch.randn(11, 16, device=device, requires_grad=True)
    ws = torch.randn(40, 16, device=device, requires_grad=True)
    ht, wt = torch.randn(11, 8, device=device), torch.randn(40, 8, device=device)
    fused = softlight.linear_distillation_loss(hs, ws, ht, wt, divergence="jsd", chunk_size=4)
    unfused = softlight.distillation_loss(hs @ ws.t(), ht @ wt.t(), divergence="jsd")
    torch.testing.assert_close(fused, unfused)
    for got, want in zip(torch.autograd.grad(fused, (hs, ws)), torch.autograd.grad(unfused, (hs, ws))):
        torch.testing.assert_close(got, want)
    # The teacher needs no gradient: none is made (its logits are never overwritten with one).
    out = softlight.linear_distillation_loss(hs, ws, ht, wt, reduction="none")
    assert out.grad_fn is not None and out.shape == (11,)


def test_linear_gradcheck(device):
    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)

    hs, ws, bs, ht, wt = leaf(4, 3), leaf(5, 3), leaf(5), leaf(4, 2), leaf(5, 2)
    target = torch.tensor([0, -100, 2, 3], device=device)
    for reduction, divergence in (("mean", "jsd"),):  # "none" (logits recomputed) is checked against the reference
        assert torch.autograd.gradcheck(
            lambda *a: softlight.linear_distillation_loss(a[0], a[1], a[3], a[4], student_bias=a[2], target=target,
                                                          divergence=divergence, reduction=reduction, chunk_size=3),
            (hs, ws, bs, ht, wt), fast_mode=True)


# ---------------------------------------------------------------------------------------------
# torch ops, compile, bad input


# A backward op has no autograd formula of its own to check; its fake tensors and tracing are.
BACKWARD_OPCHECKS = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")


def test_opcheck_and_compile_fullgraph(device):
    student, teacher = make_pair((2, 3, 40), torch.float32, device)
    student.requires_grad_()
    target = rows_target((2, 3), device, (4,))
    for options, tgt in ((DistillationOptions("jsd", 0.3, 0.5, -100, "none"), target),):
        torch.library.opcheck(OPS.distillation.default, (student, teacher, tgt, options.encode()))
        with torch.no_grad():
            _, *stats, _ = OPS.distillation(student, teacher, tgt, options.encode())
        torch.library.opcheck(OPS.distillation_backward.default,
                              (torch.randn(2, 3, device=device), student.detach(), teacher, tgt, *stats,
                               options.encode(), True, True), test_utils=BACKWARD_OPCHECKS)
    hs, ws = torch.randn(6, 8, device=device, requires_grad=True), torch.randn(40, 8, device=device, requires_grad=True)
    ht, wt = torch.randn(6, 4, device=device), torch.randn(40, 4, device=device)
    o = LinearDistillationOptions(reduction="none", rows=4, student_needs=(True, True, False))
    torch.library.opcheck(OPS.linear_distillation.default, (hs, ws, None, ht, wt, None, None, o.encode()))
    with torch.no_grad():
        out = OPS.linear_distillation(hs, ws, None, ht, wt, None, None, o.encode())
    torch.library.opcheck(OPS.linear_distillation_backward.default,
                          (torch.randn(6, device=device), hs.detach(), ws.detach(), None, ht, wt, None, None,
                           *out[7:14], o.encode()), test_utils=BACKWARD_OPCHECKS)

    cases = [
        (lambda s: softlight.distillation_loss(s * 1.0, teacher, divergence="reverse_kl", target=target), (student,)),
        (lambda h, w: softlight.linear_distillation_loss(h, w, ht, wt, divergence="jsd", chunk_size=4), (hs, ws)),
    ]
    for fn, inputs in cases:
        torch._dynamo.reset()
        eager_in = [t.detach().clone().requires_grad_() for t in inputs]
        compiled_in = [t.detach().clone().requires_grad_() for t in inputs]
        expected = fn(*eager_in)
        got = torch.compile(fn, fullgraph=True, backend="aot_eager")(*compiled_in)
        torch.testing.assert_close(got, expected)
        for a, b in zip(torch.autograd.grad(got, compiled_in), torch.autograd.grad(expected, eager_in)):
            torch.testing.assert_close(a, b)


def test_bad_input_is_rejected(device):
    s, t = make_pair((4, 10), torch.float32, device)
    target = torch.tensor([0, 1, -100, 9], device=device)
    dl, ldl = softlight.distillation_loss, softlight.linear_distillation_loss
    hs, ws = torch.randn(4, 8, device=device), torch.randn(10, 8, device=device)
    ht, wt = torch.randn(4, 6, device=device), torch.randn(10, 6, device=device)
    cases = [
        (TypeError, "student_logits must be a floating-point", lambda: dl(s.long(), t)),
        (TypeError, "teacher_logits must be a torch.Tensor", lambda: dl(s, [1.0])),
        (ValueError, "teacher_logits has shape \\(4, 11\\) but student_logits has \\(4, 10\\)",
         lambda: dl(s, torch.randn(4, 11, device=device))),
        (ValueError, "0-d", lambda: dl(torch.tensor(1.0, device=device), t)),
        (ValueError, "empty vocabulary", lambda: dl(s[:, :0], t[:, :0])),
        (ValueError, "divergence must be one of", lambda: dl(s, t, divergence="js")),
        (ValueError, "beta=0.0 makes the JSD identically 0", lambda: dl(s, t, divergence="jsd", beta=0.0)),
        (ValueError, "beta must be between 0.0 and 1.0", lambda: dl(s, t, beta=1.5)),
        (TypeError, "beta must be a real number", lambda: dl(s, t, beta="half")),
        (ValueError, "temperature", lambda: dl(s, t, temperature=0.0)),
        (ValueError, "reduction must be one of", lambda: dl(s, t, reduction="batchmean")),
        (TypeError, "ignore_index must be an int", lambda: dl(s, t, ignore_index=1.5)),
        (TypeError, "target must hold class indices", lambda: dl(s, t, target=target.float())),
        (ValueError, "target must have shape \\(4,\\)", lambda: dl(s, t, target=target[:2])),
        (RuntimeError, "teacher_logits is on device meta", lambda: dl(s, t.to("meta"))),
        (ValueError, "teacher_weight has a vocabulary of 11",
         lambda: ldl(hs, ws, ht, torch.randn(11, 6, device=device))),
        (ValueError, "teacher_weight has hidden size 6 .* but teacher_hidden has 5",
         lambda: ldl(hs, ws, torch.randn(4, 5, device=device), wt)),
        (ValueError, "teacher_hidden has tokens of shape \\(3,\\)", lambda: ldl(hs, ws, ht[:3], wt)),
        (TypeError, "student_weight has dtype", lambda: ldl(hs, ws.double(), ht, wt)),
        (ValueError, "student_bias must have shape \\(10,\\)",
         lambda: ldl(hs, ws, ht, wt, student_bias=torch.randn(3, device=device))),
        (ValueError, "chunk_size must be >= 1", lambda: ldl(hs, ws, ht, wt, chunk_size=0)),
        (ValueError, "target must have shape \\(4,\\)", lambda: ldl(hs, ws, ht, wt, target=target[None])),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()
