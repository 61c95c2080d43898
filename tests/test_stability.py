"""The stability study: its measures, and softlight's results on a quick catalogue."""

import numpy as np
import pytest
import torch

from softlight.bench import stability


def test_ulp_of_each_dtype():
    assert stability.ulp(np.array([1.0]), torch.float32)[0] == 2.0**-23
    assert stability.ulp(np.array([1.5]), torch.bfloat16)[0] == 2.0**-7
    assert stability.ulp(np.array([-3.0]), torch.float16)[0] == 2.0**-9
    assert stability.ulp(np.array([0.0]), torch.float32)[0] == 2.0**-149  # smallest subnormal
    assert stability.ulp(np.array([1e-40]), torch.float32)[0] == 2.0**-149


def test_measure_counts_correct_rounding_as_zero_and_flags_non_finite():
    exact = np.array([1.0 + 2.0**-30, 1e39, 3.0, -np.inf])
    out = np.array([1.0, np.inf, 3.0 + 2.0**-21, -np.inf])  # rounded, correct overflow, 2 ulps, same inf
    m = stability.measure(out, exact, torch.float32)
    assert m["max_ulp"] == pytest.approx(2.0) and m["nonfinite_where_finite"] == 0
    m = stability.measure(np.array([np.nan, 1.0]), np.array([0.5, 1.0]), torch.float32)
    assert m["max_ulp"] == np.inf and m["nonfinite_where_finite"] == 1


@pytest.fixture(scope="module")
def quick_study():
    return stability.run_study(cases=sorted(stability.QUICK))


def test_softlight_never_gives_non_finite_where_the_answer_is_finite(quick_study):
    ours = quick_study[quick_study.provider == "softlight"]
    assert ours.nonfinite_where_finite.sum() == 0
    # ... while torch does for logits / T past the dtype's range, and the naive formula does
    # for large logits.
    assert quick_study[quick_study.provider == "torch"].nonfinite_where_finite.sum() > 0
    naive = quick_study[quick_study.provider == "naive reference (float64)"]
    assert naive[naive.case == "scale max/4"].nonfinite_where_finite.sum() > 0


def test_forward_outputs_and_cross_entropy_gradients_are_within_an_ulp_or_a_few(quick_study):
    """1 ulp for bf16/fp16 outputs, a few for fp32 (the loss is always fp32). Softmax and
    log-softmax backward start from the saved, rounded output, as torch's do; the page reports
    them without a bound."""
    ours = quick_study[quick_study.provider == "softlight"]
    for r in ours.itertuples():
        if r.direction == "backward" and r.op != "cross_entropy":
            continue
        bound = 4.0 if r.out_dtype == "float32" else 1.0
        assert r.max_ulp <= bound, (r.case, r.op, r.direction, r.dtype, r.max_ulp)


def test_report_files(quick_study, tmp_path):
    stability.write_report(quick_study, str(tmp_path), "Numerical stability: test")
    text = (tmp_path / "stability.md").read_text()
    assert "## Summary: worst case over the catalogue" in text and "## Where the naive formula breaks" in text
    assert "scale max/4" in text
    assert (tmp_path / "stability.png").stat().st_size > 10_000
    assert len((tmp_path / "stability.csv").read_text().splitlines()) == len(quick_study) + 1
