"""Gate types and the GatingStrategy hierarchy."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.path import Path as MplPath

from immunomon.errors import UserError
from immunomon.gating.gates import (
    BooleanGate, Dimension, EllipseGate, GatingStrategy, PolygonGate, QuadrantGate, RangeGate, RatioDimension,
    RectangleGate, points_in_polygon,
)
from immunomon.preprocess.transforms import ArcsinhTransform


@pytest.fixture
def data():
    rng = np.random.default_rng(42)
    return pd.DataFrame({"x": rng.uniform(-1, 11, 5000), "y": rng.uniform(-1, 11, 5000), "z": rng.normal(5, 2, 5000)})


def test_range_and_rectangle_are_half_open():
    d = {"x": np.array([1.0, 2.0, 3.0, 4.0]), "y": np.array([0.0, 0.0, 9.0, 0.0])}
    assert RangeGate("r", "x", 2, 4).evaluate(d).tolist() == [False, True, True, False]
    assert RangeGate("r", "x", min=3).evaluate(d).tolist() == [False, False, True, True]
    assert RangeGate("r", "x", max=2).evaluate(d).tolist() == [True, False, False, False]
    rect = RectangleGate("q", ["x", "y"], bounds=[(2, 5), (None, 1)])
    assert rect.evaluate(d).tolist() == [False, True, False, True]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polygon_matches_matplotlib_even_odd(seed):
    rng = np.random.default_rng(seed)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    verts = np.column_stack([5 + 4 * np.cos(angles) * rng.uniform(0.3, 1, 9), 5 + 4 * np.sin(angles)])
    pts = rng.uniform(0, 10, (20000, 2))
    ours = points_in_polygon(pts[:, 0], pts[:, 1], verts)
    ref = MplPath(verts).contains_points(pts)
    assert (ours != ref).sum() == 0
    assert 0 < ours.sum() < len(pts)


def test_polygon_self_intersecting_uses_even_odd():
    star = np.array([[0, 0], [2, 4], [4, 0], [0, 3], [4, 3]], dtype=float)  # pentagram: centre is "outside"
    inside = points_in_polygon(np.array([2.0, 2.0]), np.array([2.0, 3.7]), star)
    assert inside.tolist() == [False, True]


def test_ellipse_matches_mahalanobis(data):
    cov = np.array([[4.0, 1.5], [1.5, 2.0]])
    g = EllipseGate("e", ["x", "y"], mean=[5, 5], covariance=cov, distance_square=1.5)
    d = data[["x", "y"]].to_numpy() - 5
    expected = np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d) <= 1.5
    np.testing.assert_array_equal(g.evaluate(data), expected)
    assert 0 < expected.sum() < len(d)


def test_quadrants_partition_and_boolean_ops(data):
    q = QuadrantGate.cross("q", "x", "y", 5, 4)
    masks = q.evaluate_all(data)
    assert list(masks) == ["x+y+", "x+y-", "x-y+", "x-y-"]
    np.testing.assert_array_equal(sum(m.astype(int) for m in masks.values()), 1)
    np.testing.assert_array_equal(masks["x+y-"], (data.x >= 5) & (data.y < 4))
    np.testing.assert_array_equal(q.evaluate(data, "x-y+"), masks["x-y+"])
    ops = {"a": (data.x > 3).to_numpy(), "b": (data.y > 3).to_numpy()}
    np.testing.assert_array_equal(BooleanGate("n", operation="and", operands=["a", "b"]).evaluate(ops), ops["a"] & ops["b"])
    np.testing.assert_array_equal(BooleanGate("n", operation="or", operands=["a", "b"], complement=[True, False]).evaluate(ops),
                                  ~ops["a"] | ops["b"])
    np.testing.assert_array_equal(BooleanGate("n", operation="not", operands=["a"]).evaluate(ops), ~ops["a"])


def test_hierarchy_memberships_paths_and_counts(data):
    gs = GatingStrategy([
        PolygonGate("poly", ["x", "y"], "rect", vertices=[[0, 0], [10, 0], [10, 10], [0, 10]]),  # child first
        RectangleGate("rect", ["x", "y"], bounds=[(1, 9), (1, 9)]),
        RangeGate("range", "z", 4, None, parent="poly"),
        QuadrantGate.cross("quad", "x", "z", 5, 5, parent="range"),
        BooleanGate("notrange", [], "poly", operation="not", operands=["range"]),
    ])
    r = gs.apply(data)
    rect = (data.x >= 1) & (data.x < 9) & (data.y >= 1) & (data.y < 9)
    rng_ = rect & (data.z >= 4)
    np.testing.assert_array_equal(r.membership("poly"), rect)
    np.testing.assert_array_equal(r.membership("range"), rng_)
    np.testing.assert_array_equal(r.membership("notrange"), rect & ~rng_)
    assert r.membership("x+z+").sum() + r.membership("x-z-").sum() + r.membership("x+z-").sum() \
        + r.membership("x-z+").sum() == rng_.sum()
    assert gs.path_of("x+z-") == "rect/poly/range/x+z-"
    assert gs.children("poly") == ["range", "notrange"]
    c = r.counts().set_index("population_id")
    assert c.loc["range", "count"] == rng_.sum() and c.loc["range", "parent"] == "poly"
    frame = r.membership_frame(["rect", "range"])
    assert frame.dtypes.tolist() == [np.uint8, np.uint8] and len(frame) == len(data)


def test_transform_compensation_and_ratio_dimensions():
    rng = np.random.default_rng(3)
    true = rng.gamma(2, 300, size=(2000, 2))
    spill = pd.DataFrame([[1.0, 0.3], [0.1, 1.0]], index=["A", "B"], columns=["A", "B"])
    raw = pd.DataFrame(true @ spill.to_numpy(), columns=["A", "B"])
    t = ArcsinhTransform(150)
    gs = GatingStrategy([
        RangeGate("compA", Dimension("A", compensation="FCS", transform=t), min=float(t.transform(500.0))),
        RangeGate("ratio", RatioDimension("AB", numerator="A", denominator="B", A=2.0, B=0.0, C=0.0,
                                          compensation="M"), min=1.0),
    ], compensations={"M": spill})
    r = gs.apply(raw, spillover=spill)
    np.testing.assert_array_equal(r.membership("compA"), true[:, 0] >= 500 - 1e-6)
    np.testing.assert_array_equal(r.membership("ratio"), 2 * true[:, 0] / true[:, 1] >= 1.0)


def test_user_errors():
    d = pd.DataFrame({"x": [1.0, 2.0]})
    with pytest.raises(UserError, match="gate 'g': dimension 'nope' is not a channel"):
        GatingStrategy([RangeGate("g", "nope", 0, 1)]).apply(d)
    with pytest.raises(UserError, match="refers to undefined gate 'missing'"):
        GatingStrategy([RangeGate("g", "x", 0, 1, parent="missing")]).apply(d)
    with pytest.raises(UserError, match="cycle"):
        GatingStrategy([RangeGate("a", "x", 0, 1, parent="b"), RangeGate("b", "x", 0, 1, parent="a")]).apply(d)
    with pytest.raises(UserError, match="defined more than once"):
        GatingStrategy([RangeGate("a", "x", 0, 1), RangeGate("a", "x", 0, 2)])
    with pytest.raises(UserError, match="at least 3 vertices"):
        PolygonGate("p", ["x", "y"], vertices=[[0, 0], [1, 1]])
    with pytest.raises(UserError, match="neither min nor max"):
        RangeGate("r", "x")
    with pytest.raises(UserError, match="'not' cannot take 2"):
        BooleanGate("b", operation="not", operands=["a", "c"])


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 12), st.integers(0, 2**32 - 1))
def test_random_polygons_match_matplotlib(n_vertices, seed):
    rng = np.random.default_rng(seed)
    verts = rng.uniform(0, 10, (n_vertices, 2))  # arbitrary, often self-intersecting
    pts = rng.uniform(-1, 11, (2000, 2))
    ours = points_in_polygon(pts[:, 0], pts[:, 1], verts)
    ref = MplPath(np.vstack([verts, verts[:1]]), closed=True).contains_points(pts)
    assert (ours != ref).sum() == 0  # random points are never exactly on an edge
