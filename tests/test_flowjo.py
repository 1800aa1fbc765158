"""FlowJo 10 workspace import: counts against FlowJo's own, malicious input."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunomon.errors import UserError
from immunomon.gating.flowjo import parse_wsp, read_wsp
from immunomon.io.fcs import read_fcs
from immunomon.preprocess.transforms import FlowJoBiexTransform, LinearTransform

DATA = Path(__file__).parent / "data" / "flowjo"


@pytest.fixture(scope="module")
def gated():
    f = read_fcs(DATA / "68983.fcs", dtype="float64", scale=True)
    sample = read_wsp(DATA / "gating.wsp").sample()
    return sample, sample.counts(sample.gate(pd.DataFrame(f.events, columns=list(f.names))))


def test_workspace_structure():
    ws = read_wsp(DATA / "gating.wsp")
    assert set(ws.groups) == {"All Samples", "Compensation"} and ws.groups["All Samples"] == ["1"]
    s = ws.sample("68983.fcs")
    assert s is ws.sample() and s is ws.sample(group="All Samples")
    assert s.comp_prefix == "Comp-" and s.spillover.shape == (11, 11)
    assert s.spillover.loc["FITC-A", "AmCyan-A"] == pytest.approx(0.7135625482)
    assert isinstance(s.transforms["Comp-PE-A"], FlowJoBiexTransform)
    assert s.transforms["Comp-PE-A"].width == -100
    assert isinstance(s.transforms["FSC-A"], LinearTransform)
    assert len(s.gate_paths) == 15
    assert "Lymphocytes/Singlets/Singlets2/NK1_1-/T cells/ab T cells/CD4 T cells" in s.gate_paths


def test_counts_within_tolerance_of_flowjo(gated):
    _, counts = gated
    counts = counts.assign(delta=counts["count"] - counts["flowjo_count"])
    counts["allowed"] = np.maximum(15, np.floor(0.001 * counts["flowjo_count"]))
    print("\nFlowJo workspace counts (immunomon vs FlowJo 10.5.3):")
    print(counts.to_string(index=False))
    assert (counts["flowjo_count"] > 0).all()
    assert (counts["delta"].abs() <= counts["allowed"]).all()


def test_hierarchy_is_nested(gated):
    sample, counts = gated
    by_path = dict(zip(counts.gate_path, counts["count"]))
    for path, n in by_path.items():
        if "/" in path:
            assert n <= by_path[path.rsplit("/", 1)[0]]
    assert sample.strategy.parent_of("Lymphocytes/Singlets") == "Lymphocytes"


def test_unknown_sample_and_group():
    ws = read_wsp(DATA / "gating.wsp")
    with pytest.raises(UserError, match="no sample 'other.fcs'"):
        ws.sample("other.fcs")
    with pytest.raises(UserError, match="no sample group 'Nope'"):
        ws.sample(group="Nope")


def test_malicious_and_malformed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    xxe = f'<?xml version="1.0"?><!DOCTYPE w [<!ENTITY x SYSTEM "file://{secret}">]><Workspace>&x;</Workspace>'
    with pytest.raises(UserError) as info:
        parse_wsp(xxe, "evil.wsp")
    assert "refused" in str(info.value) and "TOP-SECRET" not in str(info.value)
    laughs = ('<?xml version="1.0"?><!DOCTYPE w [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
              '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><Workspace>&c;</Workspace>')
    with pytest.raises(UserError, match="refused"):
        parse_wsp(laughs, "laughs.wsp")
    with pytest.raises(UserError, match="not well-formed"):
        parse_wsp("<Workspace><Sample>", "cut.wsp")
    with pytest.raises(UserError, match="holds no samples"):
        parse_wsp("<Workspace/>", "empty.wsp")
    text = (DATA / "gating.wsp").read_text()
    at = text.index('fcs-dimension data-type:name="FSC-A"', text.index("<SampleNode"))
    text = text[:at] + text[at:].replace('"FSC-A"', '"FSC-X"', 1)
    sample = parse_wsp(text, "edited.wsp").sample()
    f = read_fcs(DATA / "68983.fcs", scale=True)
    with pytest.raises(UserError, match="gate 'Lymphocytes': dimension 'FSC-X' is not a channel"):
        sample.gate(pd.DataFrame(f.events, columns=list(f.names)))


def _strip_sample_matrix(text: str, keep_element: bool) -> str:
    start = text.index("<transforms:spilloverMatrix", text.index("<SampleList>"))
    end = text.index("</transforms:spilloverMatrix>", start) + len("</transforms:spilloverMatrix>")
    head = text[start:text.index(">", start) + 1]
    return text[:start] + (head + "</transforms:spilloverMatrix>" if keep_element else "") + text[end:]


def test_matrix_referenced_by_id_and_missing_matrix(gated):
    _, expected = gated
    f = read_fcs(DATA / "68983.fcs", dtype="float64", scale=True)
    events = pd.DataFrame(f.events, columns=list(f.names))
    text = (DATA / "gating.wsp").read_text()
    by_ref = parse_wsp(_strip_sample_matrix(text, keep_element=True), "ref.wsp").sample()
    assert by_ref.spillover.shape == (11, 11)
    pd.testing.assert_frame_equal(by_ref.counts(by_ref.gate(events)), expected)
    uncompensated = parse_wsp(_strip_sample_matrix(text, keep_element=False), "nocomp.wsp").sample()
    assert uncompensated.spillover is None
    with pytest.raises(UserError, match="dimension 'Comp-PE-A' is not a channel"):
        uncompensated.gate(events)


def test_result_paths_are_flowjo_paths(gated):
    sample, counts = gated
    f = read_fcs(DATA / "68983.fcs", scale=True)
    table = sample.gate(pd.DataFrame(f.events, columns=list(f.names))).counts().set_index("population_id")
    for path in sample.gate_paths:
        assert table.loc[path, "path"] == path


def test_events_outside_gate_is_complement_within_parent(gated):
    _, expected = gated
    text = (DATA / "gating.wsp").read_text()
    at = text.index('<Population name="NK cells"')
    at = text.index('eventsInside="1"', at)
    text = text[:at] + 'eventsInside="0"' + text[at + len('eventsInside="1"'):]
    sample = parse_wsp(text, "outside.wsp").sample()
    f = read_fcs(DATA / "68983.fcs", dtype="float64", scale=True)
    counts = sample.counts(sample.gate(pd.DataFrame(f.events, columns=list(f.names)))).set_index("gate_path")
    before = expected.set_index("gate_path")["count"]
    nk = "Lymphocytes/Singlets/Singlets2/NK1_1+/NK cells"
    assert counts.loc[nk, "count"] == before["Lymphocytes/Singlets/Singlets2/NK1_1+"] - before[nk]
    assert list(counts.index) == list(before.index)


def test_boolean_nodes(gated):
    _, expected = gated
    t = "Lymphocytes/Singlets/Singlets2/NK1_1-/T cells"
    nodes = (f'<NotNode name="not ab" owningGroup="" count="-1"><Dependents><Dependent name="{t}/ab T cells" />'
             f'</Dependents></NotNode><OrNode name="ab or gd" owningGroup="" count="-1"><Dependents>'
             f'<Dependent name="{t}/ab T cells" /><Dependent name="{t}/gd T cells" /></Dependents></OrNode>')
    text = (DATA / "gating.wsp").read_text()
    at = text.index('<Population name="gd T cells"')
    sample = parse_wsp(text[:at] + nodes + text[at:], "bool.wsp").sample()
    f = read_fcs(DATA / "68983.fcs", dtype="float64", scale=True)
    result = sample.gate(pd.DataFrame(f.events, columns=list(f.names)))
    ab, gd = (result.membership(f"{t}/{n}") for n in ("ab T cells", "gd T cells"))
    tcells = result.membership(t)
    np.testing.assert_array_equal(result.membership(f"{t}/not ab"), tcells & ~ab)
    np.testing.assert_array_equal(result.membership(f"{t}/ab or gd"), tcells & (ab | gd))
    assert sample.flowjo_counts[f"{t}/not ab"] == -1
    base = expected.set_index("gate_path")["count"]
    assert int(result.membership(f"{t}/not ab").sum()) == base[t] - base[f"{t}/ab T cells"]
