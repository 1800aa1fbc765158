"""The built-in Treg template: structure, overrides, validation, and accuracy on a simulated study."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from immunomon.errors import UserError
from immunomon.gating.gates import BooleanGate, PolygonGate, RectangleGate
from immunomon.gating.template import GatingTemplate, builtin_template_path

CANONICAL = {"Cells", "Singlets", "Live", "Lymphocytes", "Monocytes", "T cells", "CD4 T", "CD8 T", "Treg",
             "Treg naive", "Treg memory", "CD4 Tconv", "NK", "NK CD56bright", "NK CD56dim", "B cells"}


def _truth_membership(labels: pd.Series, artefact: pd.Series, parents: dict[str, str]) -> dict[str, np.ndarray]:
    """Population -> bool over events: artefact-free events whose most specific label is the
    population or one of its descendants (Cells/Singlets/Live: every artefact-free event)."""
    good = (artefact == "none").to_numpy()
    lab = labels.to_numpy()
    out = {}
    for pop in parents:
        members = {pop} | {p for p in parents if pop in _lineage(p, parents)}
        out[pop] = good & np.isin(lab, list(members)) if pop not in ("Cells", "Singlets", "Live") else good
    return out


def _lineage(pop: str, parents: dict[str, str]) -> list[str]:
    chain = []
    while parents.get(pop):
        pop = parents[pop]
        chain.append(pop)
    return chain


def test_builtin_template_has_the_canonical_populations():
    t = GatingTemplate.load("treg")
    assert set(t.population_names) == CANONICAL
    assert t.source == str(builtin_template_path("treg"))
    doc = yaml.safe_load(builtin_template_path("treg").read_text())
    assert doc["overrides"] == {}  # the shipped template carries no sample decisions


def test_template_validation_lists_every_problem(tmp_path):
    bad = {
        "populations": [
            {"name": "A", "parent": None, "gate": {"type": "rectangle", "x": {"min": 1}}},
            {"name": "B", "parent": "Z", "gate": {"type": "blob"}},
            {"name": "C", "parent": "A", "gate": {"type": "not", "of": "Q"}},
        ],
        "overrides": {"S1": {"Nope": {}}},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError) as err:
        GatingTemplate.load(path)
    text = "\n".join(err.value.problems)
    assert "parent 'Z'" in text and "gate type" in text and "'of'" in text and "unknown population 'Nope'" in text
    assert all(str(path) in p for p in err.value.problems)
    with pytest.raises(UserError):
        GatingTemplate.load(tmp_path / "missing.yaml")


def _toy_events(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    pos = rng.random(n) < 0.3
    return pd.DataFrame({
        "FSC-A": rng.normal(60_000, 5_000, n), "SSC-A": rng.normal(20_000, 3_000, n),
        "CD3": np.where(pos, 4.0, 0.5) + rng.normal(0, 0.3, n),
    }), pos


TOY = {
    "name": "toy",
    "populations": [
        {"name": "Cells", "parent": None, "plot": ["FSC-A", "SSC-A"],
         "gate": {"type": "rectangle", "FSC-A": {"min": 10_000}}},
        {"name": "T", "parent": "Cells", "gate": {"type": "rectangle", "CD3": {"min": {"valley": [1.0, 3.5]}}}},
        {"name": "nonT", "parent": "Cells", "gate": {"type": "not", "of": "T"}},
    ],
    "positivity": {"CD3": {"valley": [1.0, 3.5]}},
}


def test_data_driven_threshold_and_override_are_recorded():
    events, pos = _toy_events()
    t = GatingTemplate.from_dict(TOY)
    g = t.apply(events, "S1")
    thr = g.thresholds.set_index(["population", "dimension", "bound"])
    assert thr.loc[("T", "CD3", "min"), "source"] == "valley"
    assert 1.5 < thr.loc[("T", "CD3", "min"), "value"] < 3.0
    assert (g.memberships["T"] == pos).mean() > 0.99
    assert np.array_equal(g.memberships["nonT"], g.memberships["Cells"] & ~g.memberships["T"])
    assert isinstance(g.gates["T"], RectangleGate) and isinstance(g.gates["nonT"], BooleanGate)
    assert g.plots["T"] == ("CD3", "SSC-A")  # 1-D gate: default plot against SSC-A

    doc = dict(TOY, overrides={"S2": {"T": {"CD3": {"min": 3.9}}, "positivity": {"CD3": 3.9}}})
    t2 = GatingTemplate.from_dict(doc)
    g2 = t2.apply(events, "S2")
    row = g2.thresholds.set_index(["population", "dimension"]).loc[("T", "CD3")]
    assert row["value"] == 3.9 and row["source"] == "override"
    assert g2.positivity["CD3"] == 3.9
    assert g2.memberships["T"].sum() == int((events["CD3"] >= 3.9).sum())
    # other samples are untouched by S2's override
    assert np.array_equal(t2.apply(events, "S1").memberships["T"], g.memberships["T"])


def test_apply_is_deterministic_and_strategy_roundtrips():
    events, _ = _toy_events(seed=3)
    t = GatingTemplate.from_dict(TOY)
    a, b = t.apply(events, "S"), t.apply(events, "S")
    assert a.thresholds.equals(b.thresholds)
    result = a.strategy().apply(events)  # the resolved gates, evaluated by gates.GatingStrategy
    for pop in ("Cells", "T", "nonT"):
        assert np.array_equal(result.membership(pop), a.memberships[pop])


def test_missing_marker_is_a_user_error():
    events, _ = _toy_events()
    with pytest.raises(UserError, match="CD3"):
        GatingTemplate.from_dict(TOY).apply(events.drop(columns=["CD3"]))


def test_every_population_f1_against_truth(prepared_small_study, truth_events, small_study):
    parents = pd.read_csv(Path(small_study) / "truth" / "populations.csv").drop_duplicates("population")
    parents = dict(zip(parents["population"], parents["parent"].fillna("")))
    tp = {p: 0 for p in CANONICAL}
    fp, fn, per_sample = dict(tp), dict(tp), {p: [] for p in CANONICAL}
    for sid, (prepared, gating) in prepared_small_study.items():
        truth = truth_events(sid).loc[prepared.keep].reset_index(drop=True)
        member = _truth_membership(truth["population"], truth["artefact"], parents)
        for p in CANONICAL:
            ours, true = gating.memberships[p], member[p]
            tp[p] += int((ours & true).sum())
            fp[p] += int((ours & ~true).sum())
            fn[p] += int((~ours & true).sum())
            denom = ours.sum() + true.sum()
            per_sample[p].append(2 * (ours & true).sum() / denom if denom else 1.0)
    f1 = {p: 2 * tp[p] / (2 * tp[p] + fp[p] + fn[p]) for p in CANONICAL}
    print("\nF1 (pooled over samples; min per sample):")
    for p in sorted(CANONICAL, key=f1.get):
        print(f"  {p:15s} {f1[p]:.4f}  {min(per_sample[p]):.4f}")
    assert min(f1.values()) >= 0.9, f1


def test_gates_are_gate_objects(prepared_small_study):
    _, gating = next(iter(prepared_small_study.values()))
    assert isinstance(gating.gates["Singlets"], PolygonGate)
    assert all(len(axes) == 2 for axes in gating.plots.values())
    assert set(gating.positivity) >= {"Ki67", "HLA-DR", "HELIOS", "CD45RA"}


def test_tiny_sample_gates_without_error(prepared_small_study):
    prepared, _ = next(iter(prepared_small_study.values()))
    for n in (0, 5):
        g = GatingTemplate.load("treg").apply(prepared.events.head(n), "tiny")
        assert all(m.shape == (n,) for m in g.memberships.values())


# --------------------------------------------------- templates for any panel: lineage, mass
def _blood(n=6000, seed=3, scale=1.0):
    """Two-population markers on an arbitrary scale (``scale`` multiplies every value)."""
    rng = np.random.default_rng(seed)
    t = rng.random(n) < 0.6
    cd4 = t & (rng.random(n) < 0.65)
    cd8 = t & ~cd4 & (rng.random(n) < 0.8)
    b = ~t & (rng.random(n) < 0.4)

    def level(pos):
        return np.where(pos, rng.normal(0.7, 0.05, n), rng.normal(0.2, 0.05, n)) * scale

    return pd.DataFrame({"CD3": level(t), "CD4": level(cd4), "CD8a": level(cd8),
                         "CD20": level(b)}), dict(t=t, cd4=cd4, cd8=cd8, b=b)


@pytest.mark.parametrize("scale", [1.0, 8.0, 250_000.0])
def test_lineage_template_is_scale_free_and_takes_what_the_panel_has(scale):
    events, truth = _blood(scale=scale)
    g = GatingTemplate.load("lineage").apply(events, "s1")
    # CD8a is found as CD8, B cells by CD20 (no CD19); no CD14/CD56/CD45RA: left out
    assert set(g.memberships) == {"Cells", "T cells", "CD4 T", "CD8 T", "Non-T cells", "B cells"}
    for pop, key in (("T cells", "t"), ("CD4 T", "cd4"), ("CD8 T", "cd8"), ("B cells", "b")):
        assert (g.memberships[pop] == truth[key]).mean() > 0.99, pop
    assert not g.thresholds["at_bound"].any()
    assert set(g.parameters.percent_of) == {"CD4 T", "CD8 T", "B cells"}
    assert g.parameters.ratios == [("CD4 T", "CD8 T")]


def test_position_without_a_valley_is_flagged_at_bound():
    events, _ = _blood()
    events["CD3"] = np.random.default_rng(0).normal(0.7, 0.05, len(events))  # every cell CD3+
    g = GatingTemplate.load("lineage").apply(events, "s1")
    t = g.thresholds.set_index(["population", "dimension"])
    assert bool(t.loc[("T cells", "CD3"), "at_bound"])
    fixed = GatingTemplate.from_dict({"populations": [{"name": "A", "parent": None, "gate": {
        "type": "rectangle", "CD3": {"min": {"valley": [0.0, 0.3]}}}}]}).apply(events, "s1")
    assert bool(fixed.thresholds["at_bound"].iloc[0])


def test_required_population_without_its_markers_is_a_user_error():
    events, _ = _blood()
    with pytest.raises(UserError, match=r"populations Treg .*FOXP3"):
        GatingTemplate.from_dict({"populations": [
            {"name": "Cells", "parent": None, "gate": {"type": "all"}},
            {"name": "Treg", "parent": "Cells", "gate": {"type": "rectangle", "FOXP3": {"min": 1.0}}},
        ]}).apply(events, "s1")
