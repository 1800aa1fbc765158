"""Gating-ML 2.0: ISAC compliance cases, export round trip, malicious and malformed input."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunomon.errors import UserError
from immunomon.gating.gates import BooleanGate, Dimension, GatingStrategy, PolygonGate, QuadrantGate, RangeGate
from immunomon.gating.gatingml import parse_gatingml, read_gatingml, to_gatingml, write_gatingml
from immunomon.io.fcs import read_fcs
from immunomon.preprocess.transforms import ArcsinhTransform, LogicleTransform

DATA = Path(__file__).parent / "data" / "gatingml"
GATE_FILES = sorted((DATA / "gates").glob("*.xml"))


@pytest.fixture(scope="module")
def sample():
    f = read_fcs(DATA / "data1.fcs", dtype="float64", scale=True)
    return pd.DataFrame(f.events, columns=list(f.names)), f.spillover


def _truth(pid):
    return np.loadtxt(DATA / "truth" / f"Results_{pid}.txt", dtype=np.int64).astype(bool)


@pytest.mark.parametrize("gate_file", GATE_FILES, ids=lambda p: p.stem)
def test_isac_compliance(gate_file, sample):
    data, spill = sample
    strategy = read_gatingml(gate_file)
    result = strategy.apply(data, spillover=spill)
    checked = 0
    for pid in strategy.population_ids:
        truth_file = DATA / "truth" / f"Results_{pid}.txt"
        if truth_file.exists():
            np.testing.assert_array_equal(result.membership(pid), _truth(pid), err_msg=f"{gate_file.name}:{pid}")
            checked += 1
    assert checked == len(strategy.population_ids)


def test_every_truth_file_is_covered():
    ids = {pid for f in GATE_FILES for pid in read_gatingml(f).population_ids}
    truth = {p.stem.removeprefix("Results_") for p in (DATA / "truth").glob("Results_*.txt")}
    assert truth <= ids


@pytest.mark.parametrize("gate_file", GATE_FILES, ids=lambda p: p.stem)
def test_export_reimport_identical(gate_file, sample, tmp_path):
    data, spill = sample
    strategy = read_gatingml(gate_file)
    out = write_gatingml(strategy, tmp_path / "out.xml")
    again = read_gatingml(out)
    assert again.population_ids == strategy.population_ids
    a, b = strategy.apply(data, spill), again.apply(data, spill)
    for pid in strategy.population_ids:
        np.testing.assert_array_equal(a.membership(pid), b.membership(pid))


def test_export_of_built_strategy_with_arcsinh_and_logicle():
    rng = np.random.default_rng(7)
    data = pd.DataFrame({"A": rng.normal(500, 800, 4000), "B": rng.normal(300, 600, 4000)})
    asinh, logicle = ArcsinhTransform(150), LogicleTransform(T=262144, W=0.5, M=4.5, A=0)
    gs = GatingStrategy([
        RangeGate("pos", Dimension("A", transform=asinh), min=1.0),
        PolygonGate("poly", [Dimension("A", transform=asinh), Dimension("B", transform=logicle)], "pos",
                    vertices=[[1, 0.1], [5, 0.1], [5, 0.5], [1, 0.5]]),
        QuadrantGate.cross("quad", Dimension("A", transform=asinh), Dimension("B", transform=logicle), 3.0, 0.3,
                           parent="pos"),
        BooleanGate("pos not poly", [], "pos", operation="and", operands=["pos", "poly"], complement=[False, True]),
    ])
    text = to_gatingml(gs)
    assert 'use-as-complement="true"' in text
    again = parse_gatingml(text)
    a, b = gs.apply(data), again.apply(data)
    for pid in gs.population_ids:
        np.testing.assert_array_equal(a.membership(pid), b.membership(pid), err_msg=pid)
        assert 0 < a.membership(pid).sum() < len(data)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating">&lol9;</gating:Gating-ML>
"""


def test_billion_laughs_refused(tmp_path):
    p = tmp_path / "laughs.xml"
    p.write_text(BILLION_LAUGHS)
    with pytest.raises(UserError, match=r"laughs.xml: refused: the XML declares a DTD"):
        read_gatingml(p)


def test_external_entity_refused_and_file_not_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    p = tmp_path / "xxe.xml"
    p.write_text(f"""<?xml version="1.0"?>
<!DOCTYPE g [<!ENTITY xxe SYSTEM "file://{secret}">]>
<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating"
  xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">
 <gating:RectangleGate gating:id="&xxe;">
  <gating:dimension gating:compensation-ref="uncompensated" gating:min="1">
   <data-type:fcs-dimension data-type:name="FL1-H"/></gating:dimension>
 </gating:RectangleGate>
</gating:Gating-ML>""")
    with pytest.raises(UserError) as info:
        read_gatingml(p)
    assert "refused" in str(info.value) and "TOP-SECRET" not in str(info.value)
    external_dtd = tmp_path / "dtd.xml"
    external_dtd.write_text(f'<?xml version="1.0"?><!DOCTYPE g SYSTEM "file://{secret}"><g/>')
    with pytest.raises(UserError, match="refused"):
        read_gatingml(external_dtd)


def test_missing_dimension_and_malformed(tmp_path, sample):
    data, spill = sample
    text = (DATA / "gates" / "gml_rect1_gate.xml").read_text().replace('"FL1-H"', '"FL9-H"')
    with pytest.raises(UserError, match="gate 'Rectangle1': dimension 'FL9-H' is not a channel"):
        parse_gatingml(text, "x.xml").apply(data, spill)
    with pytest.raises(UserError, match=r"bad.xml: line \d+, column \d+: not well-formed"):
        parse_gatingml("<gating:Gating-ML", "bad.xml")
    no_ref = (DATA / "gates" / "gml_transform_logicle_range4_gate.xml").read_text()
    no_ref = no_ref.replace('transformation-ref="Logicle_10000_0.5_4.5_0"', 'transformation-ref="nope"')
    with pytest.raises(UserError, match="transformation-ref 'nope' is not defined"):
        parse_gatingml(no_ref, "t.xml")
    no_dim = (DATA / "gates" / "gml_range_gate.xml").read_text().replace("data-type:name=", "data-type:nome=")
    with pytest.raises(UserError, match="fcs-dimension has no data-type:name"):
        parse_gatingml(no_dim, "n.xml")
    with pytest.raises(UserError, match="root element"):
        parse_gatingml("<svg/>", "s.xml")
    with pytest.raises(UserError, match="cannot read Gating-ML file"):
        read_gatingml(tmp_path / "absent.xml")


def test_spectral_matrix_unmixed_by_least_squares():
    rng = np.random.default_rng(11)
    spectra = np.array([[1.0, 0.4, 0.1], [0.05, 0.6, 1.0]])  # 2 fluorochromes over 3 detectors
    true = rng.gamma(2.0, 400.0, (3000, 2))
    data = pd.DataFrame(true @ spectra, columns=["D1", "D2", "D3"])
    text = (DATA / "gates" / "gml_matrix_rect3_gate.xml").read_text()
    start, end = text.index("<transforms:spectrumMatrix"), text.index("</transforms:spectrumMatrix>")
    matrix = ('<transforms:spectrumMatrix transforms:id="MySpill"><transforms:fluorochromes>'
              '<data-type:fcs-dimension data-type:name="FITC" /><data-type:fcs-dimension data-type:name="PE" />'
              '</transforms:fluorochromes><transforms:detectors>'
              + "".join(f'<data-type:fcs-dimension data-type:name="D{i}" />' for i in (1, 2, 3))
              + "</transforms:detectors>"
              + "".join("<transforms:spectrum>" + "".join(f'<transforms:coefficient transforms:value="{v}" />'
                                                          for v in row) + "</transforms:spectrum>"
                        for row in spectra))
    gs = parse_gatingml(text[:start] + matrix + text[end:], "spectral.xml")
    got = gs.apply(data).membership("Rectangle3")
    np.testing.assert_array_equal(got, (true[:, 0] >= 5) & (true[:, 0] < 70) & (true[:, 1] >= 9) & (true[:, 1] < 208))
    assert got.any()
    again = parse_gatingml(to_gatingml(gs))
    np.testing.assert_array_equal(again.apply(data).membership("Rectangle3"), got)
