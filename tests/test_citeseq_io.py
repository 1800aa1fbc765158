"""CITE-seq inputs: Cell Ranger reading (mtx and .h5), dsb against the R reference, CLR,
hashtag demultiplexing, discovery for ``init``, and one-line errors for bad inputs."""

import gzip
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from immunomon.errors import UserError
from immunomon.io.tenx import check_source, discover, locate, read_10x, split_modalities
from immunomon.preprocess.adt import (cell_background_mean, clr, dsb, dsb_background,
                                      is_isotype, technical_component)

DATA = Path(__file__).parent / "data" / "citeseq"
DSB = DATA / "dsb_kotliarov_87ab"
REF = DATA / "dsb_reference"


@pytest.fixture(scope="module")
def kotliarov():
    cells, raw = read_10x(DSB), read_10x(DSB, "raw")
    empty = raw[~raw.obs_names.isin(cells.obs_names)]
    return cells, empty


def test_reads_cell_ranger_folders(kotliarov):
    cells, empty = kotliarov
    assert cells.shape == (2872, 87) and empty.shape == (8005, 87)
    assert set(cells.var["feature_types"]) == {"Antibody Capture"}
    assert list(split_modalities(cells)) == ["adt"]  # ADT-only matrices work
    assert locate(DSB)[1].name == "raw_feature_bc_matrix"


def test_dsb_equals_the_r_mclust_reference(kotliarov):
    """dsb steps 1 and 2 against dsb_reference.R (mclust 6.0.0, limma removeBatchEffect)."""
    cells, empty = kotliarov
    names = list(cells.var["name"])
    isotypes = [i for i, n in enumerate(names) if is_isotype(n)]
    assert [names[i] for i in isotypes] == [
        "MouseIgG1kappaisotype_PROT", "MouseIgG2akappaisotype_PROT",
        "Mouse IgG2bkIsotype_PROT", "RatIgG2bkIsotype_PROT"]  # found by name
    assert not any(is_isotype(n) for n in ("IgA_PROT", "IgD_PROT", "IgM_PROT"))
    step1 = dsb_background(cells.X, empty.X)
    terms = pd.read_csv(REF / "dsb_cell_terms.csv")
    assert (terms["barcode"] == cells.obs_names).all()
    mu1 = cell_background_mean(step1)
    np.testing.assert_allclose(mu1, terms["background_mean"], atol=1e-8)
    tech = technical_component(mu1, step1[:, isotypes])
    sign = np.sign(np.corrcoef(tech, terms["technical"])[0, 1])
    np.testing.assert_allclose(sign * tech, terms["technical"], atol=1e-8)
    r1 = pd.read_csv(REF / "dsb_step1_first200.csv", index_col=0)
    r2 = pd.read_csv(REF / "dsb_step2_first200.csv", index_col=0)
    np.testing.assert_allclose(step1[:200], r1.to_numpy(), atol=1e-8)
    np.testing.assert_allclose(dsb(cells.X, empty.X, isotypes)[:200], r2.to_numpy(), atol=1e-8)


def test_clr_across_cells():
    x = np.array([[0, 10], [3, 0], [7, 5]], dtype=float)
    g = np.exp(np.log1p(x).mean(axis=0))
    np.testing.assert_allclose(clr(sparse.csr_matrix(x)), np.log1p(x / g))


def test_h5_and_mtx_read_the_same(tmp_path):
    from immunomon.simulate.citeseq import simulate_citeseq

    a = simulate_citeseq(tmp_path / "mtx", patients=2, visits=("D1",), cells=300, genes=30,
                         empty=100, seed=3)
    b = simulate_citeseq(tmp_path / "h5", patients=2, visits=("D1",), cells=300, genes=30,
                         empty=100, seed=3, fmt="h5")
    x, y = read_10x(a / "data" / "P001_D1"), read_10x(b / "data" / "P001_D1")
    assert (x.X != y.X).nnz == 0 and list(x.obs_names) == list(y.obs_names)
    assert list(x.var["feature_types"]) == list(y.var["feature_types"])
    assert set(split_modalities(x)) == {"rna", "adt"}
    assert read_10x(b / "data" / "P001_D1", "raw").n_obs == 400


def _broken_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "lib" / "outs" / "filtered_feature_bc_matrix"
    shutil.copytree(DSB / "filtered_feature_bc_matrix", dst)
    with gzip.open(dst / "barcodes.tsv.gz", "rt") as fh:
        lines = fh.readlines()
    with gzip.open(dst / "barcodes.tsv.gz", "wt") as fh:
        fh.writelines(lines[:-1])
    return tmp_path / "lib"


def test_bad_sources_give_one_line_each(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError) as err:
        read_10x(tmp_path / "plain")
    assert len(err.value.problems) == 1 and "not a Cell Ranger output" in err.value.problems[0]
    lib = _broken_copy(tmp_path)
    with pytest.raises(UserError) as err:
        read_10x(lib)
    assert err.value.problems == check_source(lib)
    assert "2872 barcode columns but barcodes.tsv.gz lists 2871 barcodes" in \
        err.value.problems[0]
    from immunomon.simulate.citeseq import simulate_citeseq

    root = simulate_citeseq(tmp_path / "h5", patients=1, visits=("D1",), cells=200, genes=0,
                            empty=0, seed=1, fmt="h5")
    h5 = root / "data" / "P001_D1" / "outs" / "filtered_feature_bc_matrix.h5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    problems = check_source(h5.parent.parent)
    assert len(problems) == 1 and "truncated or corrupt HDF5" in problems[0]


def _cli(monkeypatch, capsys, *args):
    from immunomon.cli import main

    monkeypatch.setattr(sys, "argv", ["immunomon", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def test_validate_rejects_bad_citeseq_sources(tmp_path, monkeypatch, capsys):
    from immunomon.simulate.citeseq import simulate_citeseq

    root = simulate_citeseq(tmp_path / "s", patients=2, visits=("D1", "D8"), cells=150,
                            genes=0, pool=2, empty=50, seed=2)
    s = pd.read_csv(root / "samples.csv")
    s.loc[1, "hashtag"] = "HTO_9"  # absent from the library
    s.to_csv(root / "samples.csv", index=False)
    (root / "data" / "L02" / "outs" / "filtered_feature_bc_matrix" / "matrix.mtx.gz").unlink()
    code, err = _cli(monkeypatch, capsys, "validate", str(root))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err
    assert any("hashtag 'HTO_9' is not in the library" in line for line in lines)
    assert any("matrix.mtx[.gz] missing" in line for line in lines)


def test_hashtag_demultiplexing_finds_singlets_and_doublets(tmp_path):
    from immunomon.preprocess.hashtag import demultiplex
    from immunomon.simulate.citeseq import simulate_citeseq

    root = simulate_citeseq(tmp_path / "s", patients=2, visits=("D1", "D8"), cells=500,
                            genes=0, pool=4, empty=0, seed=5)
    lib = read_10x(root / "data" / "L01")
    hto = split_modalities(lib)["hto"]
    calls = demultiplex(hto.X, list(hto.var["name"]), seed=0)["call"].to_numpy()
    truth = pd.read_csv(root / "truth" / "cells.csv")
    truth = truth[truth["file"] == "data/L01"]
    tag = dict(zip(pd.read_csv(root / "samples.csv")["sample_id"],
                   pd.read_csv(root / "samples.csv")["hashtag"]))
    expect = truth["sample_id"].map(lambda s: tag.get(s, s)).to_numpy()
    single = ~np.isin(expect, ["Doublet", "Negative"])
    assert (calls[single] == expect[single]).mean() > 0.97
    assert (calls[expect == "Doublet"] == "Doublet").mean() > 0.9
    assert (calls[expect == "Negative"] == "Negative").mean() > 0.9


def test_discover_finds_cell_ranger_outputs(tmp_path):
    for name in ("P01_D1", "P01_D8"):
        shutil.copytree(DSB / "filtered_feature_bc_matrix",
                        tmp_path / "runs" / name / "outs" / "filtered_feature_bc_matrix")
    shutil.copytree(DSB / "filtered_feature_bc_matrix",
                    tmp_path / "runs" / "P02_D1" / "filtered_feature_bc_matrix")  # no outs/
    panel, rows = discover(tmp_path / "runs", pattern=r"(?P<patient>P\d+)_(?P<visit>D\d+)")
    assert rows["sample_id"].tolist() == ["P01_D1", "P01_D8", "P02_D1"]
    assert rows["patient_id"].tolist() == ["P01", "P01", "P02"]
    assert rows["file"].tolist() == ["P01_D1", "P01_D8", "P02_D1"]
    assert len(panel["features"]) == 87
    assert sum(f["class"] == "isotype" for f in panel["features"].values()) == 4
    with pytest.raises(UserError, match="does not match --pattern"):
        discover(tmp_path / "runs", pattern=r"(?P<patient>X\d+)")
