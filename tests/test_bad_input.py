"""Every public function rejects bad input with the documented exception, a message naming the
argument, and without touching the caller's tensors."""

import pytest
import torch

import softlight

INF, NAN = float("inf"), float("nan")


def cases(device):
    """(name, exception, text the message must contain, call) for each kind of bad input."""
    x = torch.randn(4, 5, device=device)
    t = torch.tensor([0, 1, 2, 3], device=device)
    meta = torch.randn(4, 5, device="meta")
    sm, lsm, ce = softlight.softmax, softlight.log_softmax, softlight.cross_entropy
    table = []
    for name, fn in (("softmax", sm), ("log_softmax", lsm)):
        table += [
            (f"{name}: integer input", TypeError, "input must be a floating-point tensor", lambda fn=fn: fn(t)),
            (f"{name}: complex input", TypeError, "input must be a floating-point tensor",
             lambda fn=fn: fn(torch.randn(2, 3, dtype=torch.complex64, device=device))),
            (f"{name}: not a tensor", TypeError, "input must be a torch.Tensor", lambda fn=fn: fn([[1.0, 2.0]])),
            (f"{name}: wrong device", RuntimeError, "input is on device meta", lambda fn=fn: fn(meta)),
            (f"{name}: dim out of range", IndexError, "Dimension out of range", lambda fn=fn: fn(x, 2)),
            (f"{name}: dim not an int", TypeError, "dim must be an int", lambda fn=fn: fn(x, 1.0)),
            (f"{name}: dim None", TypeError, f"softlight.{name}: dim must be an int, got NoneType",
             lambda fn=fn: fn(x, None)),
            (f"{name}: dtype not floating", TypeError, "dtype", lambda fn=fn: fn(x, dtype=torch.int32)),
            (f"{name}: zero temperature", ValueError, "temperature", lambda fn=fn: fn(x, temperature=0.0)),
            (f"{name}: negative temperature", ValueError, "temperature", lambda fn=fn: fn(x, temperature=-2.0)),
            (f"{name}: infinite temperature", ValueError, "temperature", lambda fn=fn: fn(x, temperature=INF)),
            (f"{name}: NaN temperature", ValueError, "temperature", lambda fn=fn: fn(x, temperature=NAN)),
            (f"{name}: tensor temperature", TypeError, "temperature",
             lambda fn=fn: fn(x, temperature=torch.tensor(1.0))),
            (f"{name}: bad masked_rows", ValueError, "masked_rows", lambda fn=fn: fn(x, masked_rows="ignore")),
        ]
    table += [
        ("Softmax module: bad dim", IndexError, "Dimension out of range", lambda: softlight.Softmax(dim=3)(x)),
        ("LogSoftmax module: bad temperature", ValueError, "temperature",
         lambda: softlight.LogSoftmax(dim=1, temperature=0)(x)),
        ("cross_entropy: integer input", TypeError, "input must be a floating-point tensor", lambda: ce(t.view(2, 2), t[:2])),
        ("cross_entropy: wrong device", RuntimeError, "input is on device meta", lambda: ce(meta, t)),
        ("cross_entropy: target on another device", RuntimeError, "target is on meta",
         lambda: ce(x, torch.zeros(4, dtype=torch.long, device="meta"))),
        ("cross_entropy: target batch mismatch", ValueError, "class-index target must have shape", lambda: ce(x, t[:3])),
        ("cross_entropy: target with extra dims", ValueError, "class-index target must have shape",
         lambda: ce(x, t.view(4, 1))),
        ("cross_entropy: target out of range", IndexError, "target 5 is out of bounds for 5 classes",
         lambda: ce(x, torch.tensor([0, 5, 1, 2], device=device))),
        ("cross_entropy: negative target", IndexError, "target -3 is out of bounds for 5 classes",
         lambda: ce(x, torch.tensor([0, -3, 1, 2], device=device))),
        ("cross_entropy: boolean target", TypeError, "target must hold class indices", lambda: ce(x, t > 1)),
        ("cross_entropy: probabilities not float", TypeError, "probabilities must be floating point",
         lambda: ce(x, torch.ones(4, 5, dtype=torch.long, device=device))),
        ("cross_entropy: probabilities of the wrong shape", ValueError, "must have the input's shape",
         lambda: ce(x, torch.rand(4, 6, device=device))),
        ("cross_entropy: float class indices", TypeError, "the shape of class indices, but dtype torch.float32: "
         "class indices must be an integer dtype", lambda: ce(x, t.float())),
        ("cross_entropy: probabilities of the wrong shape say what indices would be", ValueError,
         r"class indices, an integer dtype, would have shape \(4,\)", lambda: ce(x, torch.rand(3, device=device))),
        ("cross_entropy: probabilities with a class ignore_index", ValueError,
         "ignore_index=2 does not apply to class-probability targets",
         lambda: ce(x, torch.rand(4, 5, device=device), ignore_index=2)),
        ("cross_entropy: bad reduction", ValueError, "reduction", lambda: ce(x, t, reduction="average")),
        ("cross_entropy: label_smoothing > 1", ValueError, "label_smoothing", lambda: ce(x, t, label_smoothing=1.1)),
        ("cross_entropy: negative label_smoothing", ValueError, "label_smoothing", lambda: ce(x, t, label_smoothing=-0.1)),
        ("cross_entropy: NaN temperature", ValueError, "temperature", lambda: ce(x, t, temperature=NAN)),
        ("cross_entropy: negative temperature", ValueError, "temperature", lambda: ce(x, t, temperature=-1.0)),
        ("cross_entropy: zero softcap", ValueError, "softcap", lambda: ce(x, t, softcap=0.0)),
        ("cross_entropy: negative softcap", ValueError, "softcap", lambda: ce(x, t, softcap=-30.0)),
        ("cross_entropy: infinite softcap", ValueError, "softcap", lambda: ce(x, t, softcap=INF)),
        ("cross_entropy: negative z_loss", ValueError, "z_loss", lambda: ce(x, t, z_loss=-1.0)),
        ("cross_entropy: NaN z_loss", ValueError, "z_loss", lambda: ce(x, t, z_loss=NAN)),
        ("cross_entropy: weight of the wrong length", ValueError, "weight must have shape",
         lambda: ce(x, t, torch.ones(3, device=device))),
        ("cross_entropy: integer weight", TypeError, "weight must be a floating-point",
         lambda: ce(x, t, torch.ones(5, dtype=torch.long, device=device))),
        ("cross_entropy: weight on another device", RuntimeError, "weight is on meta",
         lambda: ce(x, t, torch.ones(5, device="meta"))),
        ("cross_entropy: ignore_index not an int", TypeError, "ignore_index", lambda: ce(x, t, ignore_index=-100.0)),
        ("cross_entropy: bad all_ignored", ValueError, "all_ignored", lambda: ce(x, t, all_ignored="none")),
        ("cross_entropy: 0-d input", ValueError, "class dimension", lambda: ce(torch.tensor(1.0, device=device), t)),
        ("CrossEntropyLoss module: bad reduction", ValueError, "reduction",
         lambda: softlight.CrossEntropyLoss(reduction="avg")(x, t)),
    ]
    return table, (x, t)


CASE_NAMES = [c[0] for c in cases("cpu")[0]]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input(name, device):
    table, tensors = cases(device)
    _, exc, text, call = next(c for c in table if c[0] == name)
    before = [t.clone() for t in tensors]
    with pytest.raises(exc, match=text):
        call()
    for b, t in zip(before, tensors):
        assert torch.equal(b, t), "the caller's tensor changed"


def test_weight_requiring_grad_is_refused(device):
    x = torch.randn(4, 5, device=device)
    with pytest.raises(NotImplementedError, match="weight"):
        softlight.cross_entropy(x, torch.tensor([0, 1, 2, 3], device=device), torch.ones(5, device=device, requires_grad=True))
