"""Every gating route of a study, from ``immunomon init``: FlowJo workspace (matching by $FIL,
clear errors, ellipse and curly-quadrant gates), Gating-ML 2.0, templates and no gating;
``validate`` rejects up front what ``run`` / ``gate STUDY`` would."""

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunomon.gating.flowjo import parse_wsp
from immunomon.pipeline.checks import load_checked, validate
from immunomon.pipeline.run import RunOptions, run_study
from immunomon.pipeline.supervised import _imported_gating, phenotype_sample, prepare_for_gating

DATA = Path(__file__).parent / "data"
WSP = DATA / "flowjo" / "gating.wsp"
#: FlowJo's own counts (``count=`` of the workspace's Population elements).
FLOWJO = {"Lymphocytes": 19212, "Singlets": 18689, "Singlets2": 18573, "NK1_1+": 923,
          "NK cells": 312, "NK T cells": 535, "NK1_1-": 17458, "B cells": 2459, "T cells": 10745,
          "ab T cells": 9188, "CD4 T cells": 7480, "CD8 T cells": 1407, "DN T cells": 266,
          "DP T cells": 6, "gd T cells": 1470}


def _folder(tmp_path: Path, *files: Path) -> Path:
    folder = tmp_path / "fcs"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    return folder


# ----------------------------------------------------------------------------- FlowJo
@pytest.fixture(scope="module")
def wsp_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wsp")
    folder = _folder(tmp, DATA / "flowjo" / "68983.fcs")
    from immunomon.io.discover import discover, write_study

    study = tmp / "study"
    write_study(discover(folder, study, pattern="{patient}.fcs", wsp=WSP), study)
    return study


def test_flowjo_workspace_study_reproduces_flowjo_counts(wsp_study, tmp_path, cli):
    assert validate(wsp_study) == []
    code, _, err = cli("gate", wsp_study, "--out", tmp_path / "out")
    assert code == 0, err
    pops = pd.read_csv(tmp_path / "out" / "tables" / "populations.csv")
    counts = dict(zip(pops["population"], pops["count"]))
    assert set(counts) == set(FLOWJO)
    for name, expected in FLOWJO.items():
        assert abs(counts[name] - expected) <= max(15, 0.001 * expected), name
    assert pops.set_index("population").loc["CD4 T cells", "parent"] == "ab T cells"


def test_flowjo_sample_missing_or_matched_twice_is_rejected_by_validate(wsp_study):
    study = wsp_study.parent / "edited"
    shutil.copytree(wsp_study, study)
    text = (study / "study.yaml").read_text()
    (study / "study.yaml").write_text(text.replace("gating: {wsp: ", "gating: {wsp_group: Compensation, wsp: "))
    problems = validate(study)
    assert len(problems) == 1 and "no sample matches 68983.fcs" in problems[0]
    assert "group 'Compensation'" in problems[0]
    # a workspace holding the file twice
    xml = WSP.read_text()
    sample = re.search(r"<Sample>.*?</Sample>", xml, re.S).group(0)
    twice = sample.replace('sampleID="1"', 'sampleID="2"')
    (study / "twice.wsp").write_text(xml.replace(sample, sample + twice))
    (study / "study.yaml").write_text(text.replace(re.search(r"wsp: [^}]+", text).group(0),
                                                   "wsp: twice.wsp"))
    problems = validate(study)
    assert len(problems) == 1 and "68983.fcs matches 2 samples" in problems[0]


_G = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
_D = "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"
_T = "http://www.isac-net.org/std/Gating-ML/v2.0/transformations"


def _dims(minmax=None):
    out = ""
    for name, (lo, hi) in zip(("X", "Y"), minmax or [(None, None)] * 2):
        attrs = (f' gating:min="{lo}"' if lo is not None else "") + (f' gating:max="{hi}"' if hi is not None else "")
        out += f'<gating:dimension{attrs}><data-type:fcs-dimension data-type:name="{name}"/></gating:dimension>'
    return out


def _vertices(tag, points):
    verts = "".join('<gating:vertex>' + "".join(f'<gating:coordinate data-type:value="{c}"/>' for c in p)
                    + "</gating:vertex>" for p in points)
    return f"<gating:{tag}>{verts}</gating:{tag}>"


def _workspace(populations: str) -> str:
    return (f'<?xml version="1.0"?><Workspace xmlns:gating="{_G}" xmlns:data-type="{_D}" '
            f'xmlns:transforms="{_T}"><SampleList><Sample><DataSet uri="file:/x/s.fcs" sampleID="1"/>'
            '<Transformations>'
            '<transforms:linear transforms:minRange="0" transforms:maxRange="1000">'
            '<data-type:parameter data-type:name="X"/></transforms:linear>'
            '<transforms:linear transforms:minRange="0" transforms:maxRange="1000">'
            '<data-type:parameter data-type:name="Y"/></transforms:linear></Transformations>'
            '<Keywords><Keyword name="$FIL" value="s.fcs"/></Keywords>'
            f'<SampleNode name="s.fcs" sampleID="1"><Subpopulations>{populations}</Subpopulations>'
            '</SampleNode></Sample></SampleList></Workspace>')


def test_flowjo_ellipse_and_curly_quadrant_gates():
    rng = np.random.default_rng(3)
    events = pd.DataFrame({"X": rng.uniform(0, 1000, 20_000), "Y": rng.uniform(0, 1000, 20_000)})
    # ellipse on the 256-channel display of two linear 0-1000 axes: centre (128, 128),
    # foci on the x axis at 128 ± 40, semi-axes a = 50, b = 30
    ellipse = ('<Population name="E"><Gate><gating:EllipsoidGate gating:id="e">' + _dims()
               + _vertices("foci", [(88, 128), (168, 128)])
               + _vertices("edge", [(78, 128), (178, 128), (128, 158), (128, 98)])
               + "</gating:EllipsoidGate></Gate></Population>")
    quads = "".join(
        f'<Population name="{name}"><Gate><gating:CurlyQuad gating:id="q{name}">{_dims(mm)}'
        '</gating:CurlyQuad></Gate></Population>'
        for name, mm in (("PP", [(400, None), (500, None)]), ("PN", [(400, None), (None, 500)]),
                         ("NP", [(None, 400), (500, None)]), ("NN", [(None, 400), (None, 500)])))
    ws = parse_wsp(_workspace(ellipse + quads))
    sample = ws.match("s.fcs", "s.fcs")
    result = sample.gate(events)
    dx, dy = events["X"] * 256 / 1000 - 128, events["Y"] * 256 / 1000 - 128
    expected = dx**2 / 50**2 + dy**2 / 30**2 <= 1
    np.testing.assert_array_equal(result.membership("E"), expected.to_numpy())
    quadrants = np.stack([result.membership(q) for q in ("PP", "PN", "NP", "NN")])
    assert (quadrants.sum(axis=0) == 1).all()  # a partition of the plane
    x, y = events["X"].to_numpy() * 0.256, events["Y"].to_numpy() * 0.256
    x0, y0 = 400 * 0.256, 500 * 0.256
    arm = y0 + 0.001 * np.maximum(x - x0, 0) ** 2  # the bent horizontal arm
    np.testing.assert_array_equal(result.membership("PN"), (x >= x0) & (y < arm))
    assert ((x >= x0) & (y >= y0) & (y < arm)).sum() > 0  # the bend moved events out of PP


# ----------------------------------------------------------------------------- Gating-ML
GATINGML = DATA / "gatingml"


@pytest.mark.parametrize("gate_file", ["gml_quadrant1_gate.xml", "gml_boolean_and1_gate.xml",
                                       "gml_ellipse1_gate.xml", "gml_transform_logicle_range4_gate.xml",
                                       "gml_ratio_range1_gate.xml", "gml_matrix_rect3_gate.xml"])
def test_gatingml_study_memberships_equal_the_compliance_vectors(gate_file, tmp_path):
    from immunomon.io.discover import discover, write_study

    folder = _folder(tmp_path, GATINGML / "data1.fcs")
    study_dir = tmp_path / "study"
    write_study(discover(folder, study_dir, patient_keyword="PATIENT ID",
                         gatingml=GATINGML / "gates" / gate_file), study_dir)
    study = load_checked(study_dir)
    prepared = prepare_for_gating(study, "data1")
    memberships, parents = _imported_gating(prepared, study, "data1", "gatingml")
    checked = 0
    for pid, member in memberships.items():
        truth = GATINGML / "truth" / f"Results_{pid}.txt"
        if truth.exists():
            np.testing.assert_array_equal(member, np.loadtxt(truth, dtype=np.int64).astype(bool))
            checked += 1
    assert checked >= 1
    tables = phenotype_sample(prepared, study, "data1")
    counts = dict(zip(tables["populations"]["population"], tables["populations"]["count"]))
    assert {k: int(v.sum()) for k, v in memberships.items()} == counts


def test_gatingml_study_runs_end_to_end(tmp_path, cli):
    folder = _folder(tmp_path, GATINGML / "data1.fcs")
    study, run = tmp_path / "study", tmp_path / "run"
    code, _, err = cli("init", folder, "--out", study, "--patient-keyword",
                        "PATIENT ID", "--gatingml", GATINGML / "gates" / "gml_quadrant1_gate.xml")
    assert code == 0, err
    run_study(study, run, quiet=True, options=RunOptions(embed_cells=1_000))  # a small UMAP
    pops = pd.read_csv(run / "tables" / "populations.csv").set_index("population")["count"]
    for pid in ("FL2N-FL4N", "FL2N-FL4P", "FL2P-FL4N", "FL2P-FL4P"):
        truth = np.loadtxt(GATINGML / "truth" / f"Results_{pid}.txt", dtype=np.int64)
        assert pops[pid] == truth.sum()
    page = (run / "report.html").read_text()
    assert "Gating-ML 2.0 file" in page and "Primary end point" not in page


# --------------------------------------------------------------------- templates, none
def test_template_lacking_markers_is_rejected_by_validate(tmp_path):
    from immunomon.io.discover import discover, write_study

    folder = _folder(tmp_path, GATINGML / "data1.fcs")
    study = tmp_path / "study"
    write_study(discover(folder, study, patient_keyword="PATIENT ID", template="treg"), study)
    (problem,) = validate(study)
    assert "panels.flow.gating" not in problem and "sample data1" in problem
    assert "populations Cells (FSC-A)" in problem  # the population and marker it lacks


def test_no_gating_gives_empty_population_tables(tmp_path, cli):
    folder = _folder(tmp_path, GATINGML / "data1.fcs")
    study = tmp_path / "study"
    cli("init", folder, "--out", study, "--patient-keyword", "PATIENT ID",
         "--template", "none")
    assert "gating" not in (study / "study.yaml").read_text().split("panels:")[1].split("# no gating")[0]
    code, _, err = cli("gate", study, "--out", tmp_path / "out")
    assert code == 0, err
    qc = pd.read_csv(tmp_path / "out" / "tables" / "qc_steps.csv")
    assert set(qc["status"]) == {"ran", "skipped"}
    assert (tmp_path / "out" / "tables" / "populations.csv").read_text().strip() == ""


def test_lineage_template_on_another_labs_files(tmp_path, cli):
    """Files of another instrument (24-bit integer scale, labels 'CD4 BV605', patient ids in a
    keyword, one sample per patient): init's logicle transform and the lineage template give
    the simulator's true CD4 T and CD8 T % of T cells."""
    from immunomon.io.fcs import read_fcs, write_fcs
    from immunomon.simulate import simulate_study

    sim = simulate_study(tmp_path / "sim", patients=3, visits=("D1",), events=6000, seed=4)
    lab = tmp_path / "lab"
    lab.mkdir()
    for i, f in enumerate(sorted((sim / "fcs").glob("*.fcs"))):
        d = read_fcs(f)
        labels = [n if n in ("FSC-A", "FSC-H", "SSC-A", "Time") else f"{lab_} {n[:-2]}"
                  for n, lab_ in zip(d.names, d.labels)]
        keywords = {"PATIENT ID": f"LAB-{i + 1:03d}", "$CYT": "Attune NxT", "$SRC": f.stem}
        write_fcs(lab / f"tube_{i}.fcs", np.clip(d.events * 64.0, 0, 2**24 - 1).astype(np.float64),
                  d.names, labels, datatype="I", bits=[32] * len(d.names),
                  ranges=[2**24] * len(d.names), spillover=d.spillover, keywords=keywords)
    code, out, err = cli("init", lab, "--out", tmp_path / "study", "--patient-keyword", "PATIENT ID")
    assert code == 0, err
    assert "flow cytometry ($CYT 'Attune NxT')" in out and "gating: template lineage" in out
    code, _, err = cli("gate", tmp_path / "study", "--out", tmp_path / "out")
    assert code == 0, err
    params = pd.read_csv(tmp_path / "out" / "tables" / "parameters.csv").set_index(["sample_id", "parameter"])
    truth = pd.read_csv(sim / "truth" / "populations.csv").pivot(index="sample_id", columns="population",
                                                                 values="count")
    for i, sid in enumerate(sorted(truth.index)):
        for pop in ("CD4 T", "CD8 T"):
            expected = 100 * truth.loc[sid, pop] / truth.loc[sid, "T cells"]
            assert params.loc[(f"tube_{i}", f"{pop} % of T cells"), "value"] == pytest.approx(expected, abs=1.0)
