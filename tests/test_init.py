"""``immunomon init``: panels, markers, roles, classes, instrument, transform, samples.csv from a
folder of real FCS files; bad files; what validate says about the output."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from immunomon.io.discover import channel_role, discover, keyword_value
from immunomon.markernames import canonical, clean_label, find_marker, marker_class
from immunomon.pipeline.checks import validate

DATA = Path(__file__).parent / "data"
BCRXL = DATA / "real" / "bcrxl"
CYTONORM = DATA / "real" / "cytonorm"


@pytest.mark.parametrize("label, marker", [
    ("CD4 BV605", "CD4"), ("CD20(Sm147)Dd", "CD20"), ("CD3(110:114)Dd", "CD3"),
    ("cd8 FITC-A", "CD8"), ("cd45 VioBlue-A", "CD45"), ("PI/PE-Cy5-A", "PI"), ("141Pr_CD7", "CD7"),
    ("CD45RA-BV711", "CD45RA"), ("CD3 Alexa Fluor 700", "CD3"), ("HLADR", "HLA-DR"),
    ("FoxP3", "FOXP3"), ("CD8a", "CD8"), ("TCRyd", "TCRgd"), ("l/d", "Viability"),
    ("PE-Cy7-A", ""), ("488-513/26", ""),
])
def test_marker_labels_are_cleaned(label, marker):
    assert clean_label(label) == marker


def test_marker_classes_and_spellings():
    assert [marker_class(m) for m in ("pS6", "pStat5", "pp38", "Ki67", "CD19", "IgM")] == \
        ["state", "state", "state", "state", "type", "type"]
    assert canonical("cd11c") == "CD11c" and canonical("cd45ra") == "CD45RA"
    assert find_marker("HLA-DR", ["CD3", "HLADR"]) == "HLADR"
    assert find_marker("CD19", ["CD3"]) is None


def test_channel_roles_of_a_mass_cytometry_file():
    roles = {n: channel_role(n, lab, "mass") for n, lab in [
        ("Time", ""), ("Event_length", ""), ("Ir191Di", "DNA1"), ("Pt195Di", ""), ("Ce140Di", ""),
        ("Pd102Di", "BC1"), ("Nd142Di", "CD19"), ("Ho165Di", "CD16"), ("I127Di", ""),
        ("beadDist", "beadDist")]}
    assert roles == {"Time": "time", "Event_length": "gaussian", "Ir191Di": "dna",
                     "Pt195Di": "viability", "Ce140Di": "bead", "Pd102Di": "barcode",
                     "Nd142Di": "marker", "Ho165Di": "marker", "I127Di": "other",
                     "beadDist": "bead"}
    assert channel_role("FSC-A", "", "flow") == "scatter"
    assert channel_role("AmCyan-A", "l/d", "flow") == "viability"


def test_keyword_lookup_ignores_vendor_prefixes():
    kw = {"&10PATIENT ID": "FJ#192659", "$FIL": "B07"}
    assert keyword_value(kw, "PATIENT ID") == "FJ#192659"
    assert keyword_value(kw, "$fil") == "B07"
    assert keyword_value(kw, "VISIT") is None


def _mixed_folder(root: Path) -> Path:
    """Two panels (CyTOF, flow), a non-FCS file and a truncated FCS file."""
    (root / "cytof").mkdir(parents=True)
    for f in sorted((BCRXL / "fcs").glob("*patient[12]*.fcs")):
        shutil.copy(f, root / "cytof" / f.name)
    shutil.copy(DATA / "flowjo" / "68983.fcs", root / "68983.fcs")
    (root / "notes.txt").write_text("acquired on two instruments\n")
    head = (DATA / "flowjo" / "68983.fcs").read_bytes()[:5000]
    (root / "broken.fcs").write_bytes(head)
    return root


def test_init_two_panels_and_bad_files(tmp_path, cli):
    folder = _mixed_folder(tmp_path / "in")
    out = tmp_path / "study"
    code, stdout, stderr = cli("init", folder, "--out", out)
    assert code == 0
    bad = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(bad) == 2  # one line per bad file
    assert any("notes.txt: not an FCS file" in line for line in bad)
    assert any("broken.fcs" in line and "byte offset" in line for line in bad)
    assert "5 FCS file(s) in 2 panel(s)" in stdout
    config = yaml.safe_load((out / "study.yaml").read_text())
    panels = config["panels"]
    assert sorted(panels) == ["flow1", "mass2"]  # named by instrument, in file order
    kinds = sorted(p["instrument"] for p in panels.values())
    assert kinds == ["flow", "mass"]
    mass = next(p for p in panels.values() if p["instrument"] == "mass")
    flow = next(p for p in panels.values() if p["instrument"] == "flow")
    assert mass["transform"] == {"type": "arcsinh", "cofactor": 5}
    assert mass["compensation"] == "none"
    assert mass["channels"]["pS6(Yb172)Dd"] == {"marker": "pS6", "class": "state", "role": "marker"}
    assert flow["compensation"] == "file" and flow["transform"]["type"] == "logicle"
    params = flow["transform"]["channels"]["PE-Cy7-A"]
    assert params["T"] == 262144 and 0 < params["W"] < 2.25  # estimated from compensated data
    assert flow["channels"]["AmCyan-A"]["role"] == "viability"
    assert flow["gating"] == {"template": "lineage"} and mass["gating"] == {"template": "mass"}
    samples = pd.read_csv(out / "samples.csv", dtype=str, keep_default_na=False)
    assert len(samples) == 5 and samples["sample_id"].is_unique
    # validate lists exactly the gap init printed: no patient ids
    assert "column 'patient_id' is empty on 5 of 5 rows" in stdout
    problems = validate(out)
    assert problems and all("column 'patient_id': empty value" in p for p in problems)


def test_init_with_nothing_usable_exits_2(tmp_path, cli):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.txt").write_text("nothing here\n")
    (folder / "broken.fcs").write_bytes(b"FCS3.1    " + b"0" * 40)
    code, _, stderr = cli("init", folder, "--out", tmp_path / "study")
    assert code == 2
    assert "no readable FCS file" in stderr and "notes.txt" in stderr and "broken.fcs" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "study" / "study.yaml").exists()


def test_patient_ids_from_keywords_give_a_single_visit_study(tmp_path, cli):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "gatingml" / "data1.fcs", folder / "data1.fcs")
    out = tmp_path / "study"
    code, stdout, _ = cli("init", folder, "--out", out,
                           "--patient-keyword", "PATIENT ID")
    assert code == 0
    config = yaml.safe_load((out / "study.yaml").read_text())
    assert "baseline" not in config and len(config["visits"]) == 1
    samples = pd.read_csv(out / "samples.csv", dtype=str, keep_default_na=False)
    assert samples["patient_id"].tolist() == ["FJ#192659"]
    panel = next(iter(config["panels"].values()))
    markers = {c["marker"] for c in panel["channels"].values() if c["role"] == "marker"}
    assert {"CD3", "CD4", "CD8"} <= markers
    assert panel["compensation"] == "none"  # FACSCalibur: no spillover in the file
    assert validate(out) == []


def test_pattern_and_sample_sheet_fill_samples_csv(tmp_path):
    d = discover(CYTONORM, tmp_path / "study", pattern="Gates_{patient}_Unstim_Control_{visit}.fcs",
                 sheet=CYTONORM / "metadata.csv")
    s = d.samples.set_index("sample_id")
    assert s.loc["Gates_PTLG028_Unstim_Control_2", ["patient_id", "visit", "batch", "reference"]].tolist() \
        == ["PTLG028", "2", "2", "other"]
    assert d.baseline == "1" and [v for v, _ in d.visits] == ["1", "2"]
    (panel,) = d.panels
    roles = {c.name: c.role for c in panel.channels}
    assert roles["Ir191Di"] == "dna" and roles["Pt195Di"] == "viability"
    assert roles["Ce140Di"] == "bead" and roles["Event_length"] == "gaussian"
    assert {c.marker for c in panel.channels if c.name == "Yb174Di"} == {"HLA-DR"}
    assert any("coding_detectors.txt" in line for line in d.skipped)
    bad = discover(CYTONORM, tmp_path / "s2", pattern="{patient}-{visit}.fcs")
    assert sum("does not match --pattern" in line for line in bad.skipped) == 6
    assert any("column 'patient_id' is empty on 6 of 6 rows" in g for g in bad.gaps)


def test_baseline_guess_and_visit_days(tmp_path):
    d = discover(BCRXL, tmp_path / "study", pattern="PBMC_{patient}_{visit}.fcs")
    assert d.baseline == "Ref" and [v for v, _ in d.visits] == ["Ref", "BCRXL"]
    assert sorted(d.samples["patient_id"].unique()) == ["patient1", "patient2", "patient3", "patient4"]
