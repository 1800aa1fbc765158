"""Transforms: Gating-ML 2.0 definitions, inverses, FlowJo biex, spec parsing."""

import numpy as np
import pytest
from flowkit import transforms as fk
from hypothesis import given, settings
from hypothesis import strategies as st

from immunomon.errors import UserError
from immunomon.preprocess import transforms as tr

X = np.concatenate([np.linspace(-2000, 0, 50), np.geomspace(1, 262144, 200)])


def test_closed_forms_match_gatingml_formulas():
    ln10 = np.log(10)
    np.testing.assert_allclose(tr.LinearTransform(T=1000, A=100).transform(X), (X + 100) / 1100)
    pos = X[X > 0]
    np.testing.assert_allclose(tr.LogTransform(T=10000, M=5).transform(pos), np.log10(pos / 10000) / 5 + 1)
    expected = (np.arcsinh(X * np.sinh(4 * ln10) / 10000) + 1 * ln10) / (5 * ln10)
    np.testing.assert_allclose(tr.AsinhTransform(T=10000, M=4, A=1).transform(X), expected)
    np.testing.assert_allclose(tr.ArcsinhTransform(cofactor=150).transform(X), np.arcsinh(X / 150))


@pytest.mark.parametrize("ours,theirs", [
    (tr.LogicleTransform(T=10000, W=0.5, M=4.5, A=0), fk.LogicleTransform(10000, 0.5, 4.5, 0)),
    (tr.HyperlogTransform(T=262144, W=0.5, M=4.5, A=0), fk.HyperlogTransform(262144, 0.5, 4.5, 0)),
    (tr.AsinhTransform(T=262144, M=4.5, A=0.5), fk.AsinhTransform(262144, 4.5, 0.5)),
])
def test_matches_flowkit_reference(ours, theirs):
    np.testing.assert_allclose(ours.transform(X), theirs.apply(X), rtol=1e-12, atol=1e-12)


def test_logicle_known_points():
    t = tr.LogicleTransform(T=262144, W=0.5, M=4.5, A=0)
    assert t.transform(np.array([262144.0]))[0] == pytest.approx(1.0)
    assert t.transform(np.array([0.0]))[0] == pytest.approx(0.5 / 4.5)  # zero sits at W/M


@pytest.mark.parametrize("t", [
    tr.LinearTransform(T=262144, A=100), tr.LogTransform(), tr.AsinhTransform(A=1), tr.ArcsinhTransform(5),
    tr.LogicleTransform(), tr.HyperlogTransform(), tr.FlowJoLogTransform(offset=1, decades=5),
])
def test_inverse_round_trip(t):
    x = np.geomspace(1, 262144, 300) if isinstance(t, (tr.LogTransform, tr.FlowJoLogTransform)) else X
    np.testing.assert_allclose(t.inverse_transform(t.transform(x)), x, rtol=1e-9, atol=1e-6)


def test_shape_preserved_and_float64():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for t in (tr.LogicleTransform(), tr.ArcsinhTransform(), tr.FlowJoBiexTransform()):
        y = t.transform(x)
        assert y.shape == (3, 4) and y.dtype == np.float64


@pytest.mark.parametrize("neg,width,pos", [(0, -10, 4.42), (0.5, -100, 4.5), (1, -1000, 4.0), (0, -100, 4.418539922)])
def test_flowjo_biex_matches_flowkit_lut(neg, width, pos):
    from flowkit._models.transforms._wsp_transforms import WSPBiexTransform

    ours = tr.FlowJoBiexTransform(negative=neg, width=width, positive=pos, max_value=262144)
    theirs = WSPBiexTransform(negative=neg, width=width, positive=pos, max_value=262144)
    np.testing.assert_allclose(ours.transform(X), theirs.apply(X), atol=1e-8)
    inside = X[(X > ours.inverse_transform(1.0)) & (X < ours.inverse_transform(4095.0))]
    np.testing.assert_allclose(ours.inverse_transform(ours.transform(inside)), inside, rtol=1e-9, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.floats(1, 1e3), st.lists(st.floats(-1e5, 1e5), min_size=2, max_size=20))
def test_arcsinh_monotone_and_invertible(cofactor, values):
    t = tr.ArcsinhTransform(cofactor)
    x = np.sort(np.array(values))
    y = t.transform(x)
    assert np.all(np.diff(y) >= 0)
    np.testing.assert_allclose(t.inverse_transform(y), x, rtol=1e-9, atol=1e-6)


def test_from_spec_and_errors():
    assert tr.from_spec({"type": "arcsinh", "cofactor": 150}) == tr.ArcsinhTransform(150.0)
    assert tr.from_spec({"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0}) == tr.LogicleTransform()
    assert tr.from_spec(None) is None and tr.from_spec({"type": "none"}) is None
    with pytest.raises(UserError, match="transform type 'bogus'"):
        tr.from_spec({"type": "bogus"})
    with pytest.raises(UserError, match="unknown parameter"):
        tr.from_spec({"type": "arcsinh", "cofacter": 5})
    with pytest.raises(UserError, match="cofactor must be > 0"):
        tr.ArcsinhTransform(0)
    with pytest.raises(UserError, match="logicle transform: parameters out of range"):
        tr.LogicleTransform(W=3, M=4.5)


def _ulps(a, b):
    """Distance in float32 units in the last place (same sign assumed)."""
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


def test_arcsinh_inplace_float32_within_4_ulps_of_exact():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 3000, 200_000), rng.uniform(-1e7, 1e7, 20_000),
                        10.0 ** rng.uniform(-12, 38, 20_000), -(10.0 ** rng.uniform(-12, 38, 20_000)),
                        [0.0, -0.0, 1e-45, 150.0, -150.0, 3.4e38, -3.4e38]]).astype(np.float32)
    t = tr.ArcsinhTransform(150.0)
    y = x.copy()
    t.transform_inplace(y)  # the compiled kernel: contiguous float32
    exact = np.arcsinh(x.astype(np.float64) / 150.0).astype(np.float32)
    assert np.all(np.sign(y) == np.sign(exact))
    nonzero = exact != 0
    assert _ulps(y[nonzero], exact[nonzero]).max() <= 4
    assert np.abs(y[~nonzero]).max() < 1e-30
    special = np.array([np.inf, -np.inf, np.nan], dtype=np.float32)
    t.transform_inplace(special)
    assert special[0] == np.inf and special[1] == -np.inf and np.isnan(special[2])


def test_arcsinh_inplace_other_layouts_use_the_exact_path():
    t = tr.ArcsinhTransform(5.0)
    x = np.random.default_rng(4).normal(0, 100, (1000, 3))
    column = x[:, 1]  # strided float64: numpy's arcsinh
    expected = np.arcsinh(column / 5.0)
    t.transform_inplace(column)
    np.testing.assert_array_equal(x[:, 1], expected)
    f32 = np.asfortranarray(x.astype(np.float32))
    t.transform_inplace(f32[:, 0])  # contiguous column of a Fortran array: the kernel, in place
    assert _ulps(f32[:, 0], np.arcsinh(x[:, 0].astype(np.float32).astype(np.float64) / 5.0)
                 .astype(np.float32)).max() <= 4
