"""The float64 NumPy reference: cross-checked against scipy.special and finite differences."""

import numpy as np
import pytest
import scipy.special

from softlight import reference as ref

rng = np.random.default_rng()


def finite_difference_grad(f, x, eps=1e-6):
    """Central differences of the scalar f at x, one coordinate at a time."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        g[i] = (f(x + step) - f(x - step)) / (2 * eps)
    return g


@pytest.mark.parametrize("shape,axis", [((7,), -1), ((4, 9), -1), ((4, 9), 0), ((3, 5, 6), 1), ((2, 3, 4), -1)])
@pytest.mark.parametrize("temperature", [1.0, 0.3, 4.0])
def test_forward_matches_scipy(shape, axis, temperature):
    x = rng.standard_normal(shape) * 5
    z = x / temperature
    np.testing.assert_allclose(ref.softmax(x, axis, temperature), scipy.special.softmax(z, axis=axis), rtol=1e-13, atol=0)
    np.testing.assert_allclose(ref.log_softmax(x, axis, temperature), scipy.special.log_softmax(z, axis=axis), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(ref.logsumexp(x, axis, temperature), scipy.special.logsumexp(z, axis=axis), rtol=1e-13)


def test_large_logits_stable_where_naive_overflows():
    x = np.array([[1000.0, 999.0, -1000.0], [-1e300, 0.0, 1e300], [5.0, 1.0, 2.0]])
    s = ref.softmax(x)
    np.testing.assert_allclose(s, scipy.special.softmax(x, axis=-1), rtol=1e-13)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(ref.log_softmax(x)[[0, 2]]))
    naive = ref.naive_softmax(x)
    assert np.all(np.isnan(naive[0, :2])), "the naive formula overflows: inf / inf = NaN"
    np.testing.assert_allclose(naive[2], s[2], rtol=1e-14)
    assert np.isneginf(ref.naive_log_softmax(np.array([0.0, -800.0]))[1]), "log of an underflowed softmax is -inf"
    assert np.isclose(ref.log_softmax(np.array([0.0, -800.0]))[1], -800.0)


def test_edge_rows_follow_torch():
    inf, nan = np.inf, np.nan
    x = np.array([[-inf, -inf, -inf], [inf, 1.0, 2.0], [nan, 1.0, 2.0], [-inf, 0.0, 0.0]])
    s, ls, lse = ref.softmax(x), ref.log_softmax(x), ref.logsumexp(x)
    assert np.all(np.isnan(s[:3])) and np.all(np.isnan(ls[:3]))
    np.testing.assert_array_equal(s[3], [0.0, 0.5, 0.5])
    np.testing.assert_array_equal(ls[3], [-inf, np.log(0.5), np.log(0.5)])
    assert lse[0] == -inf and lse[1] == inf and np.isnan(lse[2])
    assert ref.logsumexp(np.zeros((2, 0))).tolist() == [-inf, -inf]
    assert ref.softmax(np.zeros((2, 0))).shape == (2, 0)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_backward_matches_finite_differences(log, temperature):
    x = rng.standard_normal((3, 6)) * 2
    dy = rng.standard_normal((3, 6))
    forward = ref.log_softmax if log else ref.softmax
    backward = ref.log_softmax_backward if log else ref.softmax_backward
    y = forward(x, temperature=temperature)
    numeric = finite_difference_grad(lambda v: np.sum(dy * forward(v, temperature=temperature)), x)
    np.testing.assert_allclose(backward(y, dy, temperature=temperature), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_backward_along_axis(axis):
    x = rng.standard_normal((3, 4, 5))
    dy = rng.standard_normal((3, 4, 5))
    numeric = finite_difference_grad(lambda v: np.sum(dy * ref.softmax(v, axis)), x)
    np.testing.assert_allclose(ref.softmax_backward(ref.softmax(x, axis), dy, axis), numeric, rtol=1e-6, atol=1e-8)


def test_temperature_is_validated():
    for bad in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="temperature"):
            ref.softmax(np.ones(3), temperature=bad)


def test_relative_error_treats_non_finite_strictly():
    assert ref.relative_error([1.0, np.nan], [1.0, np.nan]) == 0.0
    assert ref.relative_error([1.0, -np.inf], [1.0, -np.inf]) == 0.0
    assert ref.relative_error([1.0, np.nan], [1.0, 2.0]) == np.inf
    assert ref.relative_error([1.0, 2.0], [1.0, np.nan]) == np.inf
    assert ref.relative_error([1.0, np.inf], [1.0, -np.inf]) == np.inf
    assert np.isclose(ref.relative_error([1.0, 2.1], [1.0, 2.0]), 0.1 / np.sqrt(5))


def test_reference_needs_no_torch():
    """Load the reference package from its folder alone (not through softlight, whose __init__
    imports torch) and use it: torch must not have been imported."""
    import pathlib
    import subprocess
    import sys

    folder = pathlib.Path(__file__).resolve().parents[1] / "reference"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('reference_alone', r'{folder / '__init__.py'}', "
        f"submodule_search_locations=[r'{folder}'])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['reference_alone'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "assert abs(mod.softmax([1.0, 2.0]).sum() - 1) < 1e-15\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
