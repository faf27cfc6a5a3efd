"""The command line: a whole run through the console script, and one-line errors with exit status 2."""

import shutil
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scvae
from scvae.cli import main

DATA = scvae.datasets.data_dir() / "pbmc68k_counts.h5ad"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of `scvae fit` through the installed console script."""
    d = tmp_path_factory.mktemp("cli")
    inp = d / "in.h5ad"
    shutil.copy(DATA, inp)
    before = inp.read_bytes()
    proc = subprocess.run(
        ["scvae", "fit", str(inp), "-o", str(d / "out.h5ad"), "--model-dir", str(d / "model"), "--max-epochs", "3"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert inp.read_bytes() == before  # the input file is never touched
    return d


@pytest.mark.slow
def test_fit_writes_output_and_model(trained):
    out = ad.read_h5ad(trained / "out.h5ad")
    assert out.obsm["X_scvae"].shape == (700, 10) and np.isfinite(out.obsm["X_scvae"]).all()
    assert out.uns["scvae"]["max_epochs"] == 3
    model = scvae.model.load(trained / "model")
    np.testing.assert_allclose(model.get_latent(out), out.obsm["X_scvae"], rtol=1e-5, atol=1e-6)


def test_embed_and_info(trained, capsys):
    assert main(["embed", str(DATA), "--model-dir", str(trained / "model"), "-o", str(trained / "emb.h5ad")]) == 0
    emb = ad.read_h5ad(trained / "emb.h5ad")
    np.testing.assert_allclose(emb.obsm["X_scvae"], ad.read_h5ad(trained / "out.h5ad").obsm["X_scvae"], atol=1e-5)
    assert emb.uns["scvae"]["max_epochs"] == 3 and emb.uns["scvae"]["key_added"] == "X_scvae"  # the model used
    assert main(["info", str(trained / "model")]) == 0
    text = capsys.readouterr().out
    assert "765 genes" in text and "nb likelihood" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "missing.h5ad", "-o", "o.h5ad"], "does not exist"),
        (["fit", "{bad}", "-o", "o.h5ad"], "could not be read as an .h5ad"),
        (["fit", "{txt}", "-o", "o.h5ad"], "is not an .h5ad file"),
        (["fit", "{data}", "-o", "o.h5ad", "--batch-key", "nope"], "'nope' is not a column of adata.obs"),
        (["fit", "{data}", "-o", "o.h5ad", "--likelihood", "gamma"], "likelihood must be one of"),
        (["fit", "{data}", "-o", "o.h5ad", "--accelerator", "quantum"], "accelerator must be one of"),
        (["fit", "{norm}", "-o", "o.h5ad"], "non-integer values"),
        (["fit", "{data}", "-o", "{data}"], "the output file is the input file"),
        (["fit", "{data}", "-o", "{exists}"], "pass --force"),
        (["fit", "{data}", "-o", "no_dir/o.h5ad"], "does not exist; create it first"),
        (["embed", "{kang}", "--model-dir", "{model}", "-o", "o.h5ad"], "genes are missing"),
        (["info", "no_such_model"], "does not exist"),
        (["info", "{txt}"], "is a file, not a model's folder"),
        (["fit", "{data}", "-o", "o.h5ad", "--model-dir", "{txt}"], "is a file; a model is saved as a folder"),
        (
            ["embed", "{umap}", "--model-dir", "{model}", "-o", "o.h5ad", "--key-added", "X_umap"],
            r"would replace adata.obsm['X_umap']",
        ),
        (
            ["de", "{data}", "--model-dir", "{model}", "-o", "de.txt", "--groupby", "cell_type", "--group1", "B"],
            "must end in .csv",
        ),
        (
            ["de", "{data}", "--model-dir", "{model}", "-o", "de.csv", "--groupby", "cell_type", "--group1", "B"],
            "is not a category",
        ),
        (
            ["de", "{data}", "--model-dir", "{model}", "-o", "de.csv", "--groupby", "kind", "--group1", "B"],
            "not a column",
        ),
    ],
)
def test_bad_input_gives_one_line_and_status_2(argv, message, trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.h5ad").write_text("not hdf5")
    (tmp_path / "x.txt").write_text("")
    (tmp_path / "exists.h5ad").write_text("")
    norm = ad.read_h5ad(DATA)
    norm.X = norm.X / 3.0
    norm.write_h5ad(tmp_path / "norm.h5ad")
    umap = ad.read_h5ad(DATA)
    umap.obsm["X_umap"] = np.zeros((umap.n_obs, 2))  # the user's UMAP, without Scanpy's uns["umap"]
    umap.write_h5ad(tmp_path / "umap.h5ad")
    paths = {
        "bad": "bad.h5ad",
        "txt": "x.txt",
        "data": str(DATA),
        "norm": "norm.h5ad",
        "umap": "umap.h5ad",
        "exists": "exists.h5ad",
        "kang": str(scvae.datasets.data_dir() / "kang_ifnb_counts.h5ad"),
        "model": str(trained / "model"),
    }
    code = main([a.format(**paths) for a in argv] + ["-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("scvae: error:") and message in err[0], err
    assert not (tmp_path / "o.h5ad").exists()


@pytest.mark.slow
def test_every_command_has_help_with_an_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    overview = capsys.readouterr().out
    assert exit_.value.code == 0
    for cmd in ("fit", "embed", "predict-perturbation", "de", "info"):
        assert cmd in overview
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and "example:" in out and "scvae " + cmd in out


def test_de_writes_a_table(trained):
    out = trained / "de.csv"
    argv = [
        "de",
        str(DATA),
        "--model-dir",
        str(trained / "model"),
        "-o",
        str(out),
        "--groupby",
        "cell_type",
        "--group1",
        "CD14+ Monocyte",
        "--n-samples",
        "300",
        "-q",
    ]
    assert main(argv) == 0
    df = pd.read_csv(out, index_col=0)
    assert len(df) == 765 and {"lfc_mean", "proba_de", "is_de", "bayes_factor"} <= set(df.columns)
    assert main(argv) == 2  # exists: needs --force
    assert main([*argv, "--force", "--subset", "cell_type=CD19+ B", "--group1", "CD19+ B"]) == 2  # one group left


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--method", "delta", "--no-bias-correction", "--cells", "decoded", "--similar", "0"],
        ["--method", "delta", "--no-bias-correction"],
        ["--similar", "0.25"],
    ],
)
def test_predict_perturbation_writes_predicted_cells(extra, tmp_path):
    kang = scvae.datasets.kang()
    kang = kang[kang.obs["cell_type"].isin(["CD4 T", "CD14 Mono", "B"]).to_numpy(), :300].copy()
    kang = kang[~((kang.obs["cell_type"] == "B") & (kang.obs["condition"] == "stimulated")).to_numpy()].copy()
    kang.write_h5ad(tmp_path / "kang.h5ad")
    scvae.model.fit(kang, max_epochs=2, progress_bar=False).save(tmp_path / "model")
    argv = ["predict-perturbation", str(tmp_path / "kang.h5ad"), "--model-dir", str(tmp_path / "model")]
    argv += ["-o", str(tmp_path / "pred.h5ad"), "--condition-key", "condition", "--control", "control"]
    argv += ["--stimulated", "stimulated", "--cell-type-key", "cell_type", "--target", "B", "-q", *extra]
    assert main(argv) == 0
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    rec = pred.uns["scvae_perturbation"]
    uncorrected = "--no-bias-correction" in extra
    assert rec["method"] == ("delta" if "--method" in extra else "transport")
    assert bool(rec["bias_corrected"]) is not uncorrected
    similar = float(extra[extra.index("--similar") + 1]) if "--similar" in extra else 0.5  # the library's default
    assert rec["similar"]["weight"] == similar and rec["min_cells"] == 10
    decoded = "--cells" in extra
    assert rec["cells"] == ("decoded" if decoded else "observed")
    n_control = int(((kang.obs["cell_type"] == "B") & (kang.obs["condition"] == "control")).sum())
    assert pred.n_obs == max(n_control, 1000) and pred.obs["source_cell"].nunique() == n_control  # the default
    logx = scvae.tl.log_normalize(pred).toarray()  # decoded, uncorrected and unmixed: the layer is X's
    assert np.allclose(pred.layers["expression"], logx, atol=1e-5) is (uncorrected and decoded and not similar)


@pytest.mark.slow
def test_predict_perturbation_writes_intervals_and_n_cells(tmp_path, capsys):
    """--interval writes each gene's interval around var['change'] (calibrated on the other types), --n-cells sets
    the number of predicted cells; with too few other types to calibrate on, one line and status 2."""
    kang = scvae.datasets.kang()
    kang = kang[kang.obs["cell_type"].isin(["CD4 T", "CD14 Mono", "B", "CD8 T", "NK"]).to_numpy(), :300].copy()
    kang = kang[~((kang.obs["cell_type"] == "B") & (kang.obs["condition"] == "stimulated")).to_numpy()].copy()
    kang.write_h5ad(tmp_path / "kang.h5ad")
    kang[kang.obs["cell_type"].isin(["CD4 T", "CD14 Mono", "B"]).to_numpy()].write_h5ad(tmp_path / "three.h5ad")
    scvae.model.fit(kang, max_epochs=2, progress_bar=False).save(tmp_path / "model")
    argv = ["predict-perturbation", str(tmp_path / "kang.h5ad"), "--model-dir", str(tmp_path / "model")]
    argv += ["-o", str(tmp_path / "pred.h5ad"), "--condition-key", "condition", "--control", "control"]
    argv += ["--stimulated", "stimulated", "--cell-type-key", "cell_type", "--target", "B", "-q"]
    assert main([*argv, "--interval", "0.9", "--n-cells", "200"]) == 0
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    lower, change, upper = pred.var[["change_lower", "change", "change_upper"]].to_numpy().T
    assert pred.n_obs == 200 and np.all(lower < change) and np.all(change < upper)
    calibration = pred.uns["scvae_perturbation"]["interval"]
    assert calibration["level"] == 0.9 and set(calibration["type_quantiles"]) == {"CD4 T", "CD14 Mono", "CD8 T", "NK"}
    capsys.readouterr()
    argv[1], argv[5] = str(tmp_path / "three.h5ad"), str(tmp_path / "pred3.h5ad")
    assert main([*argv, "--interval", "0.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs at least 3 cell types besides 'B'" in err[0], err
    assert not (tmp_path / "pred3.h5ad").exists()


def test_the_command_line_leaves_every_default_to_the_library():
    """An option left out is not passed on, so the library's own default applies (declared once, there)."""
    from scvae.cli import _given, build_parser

    parser = build_parser()
    fit = parser.parse_args(["fit", "in.h5ad", "-o", "out.h5ad"])
    options = ("likelihood", "n_latent", "max_epochs", "seed", "accelerator", "key_added")
    assert _given(fit, *options) == {}
    fit = parser.parse_args(["fit", "in.h5ad", "-o", "out.h5ad", "--n-latent", "5", "--likelihood", "poisson"])
    assert _given(fit, *options) == {"n_latent": 5, "likelihood": "poisson"}
    de = parser.parse_args(["de", "in.h5ad", "--model-dir", "m", "-o", "o.csv", "--groupby", "g", "--group1", "a"])
    assert _given(de, "mode", "delta", "n_samples", "fdr", "seed") == {}
    pred = ["predict-perturbation", "in.h5ad", "--model-dir", "m", "-o", "o.h5ad"]
    pred += [
        x for opt in ("condition-key", "control", "stimulated", "cell-type-key", "target") for x in (f"--{opt}", "x")
    ]
    assert _given(parser.parse_args(pred), "method", "cells", "similar", "n_cells", "interval", "seed") == {}


def test_python_dash_m_scvae_is_the_command_line(monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["python -m scvae", "--version"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("scvae", run_name="__main__")
    assert done.value.code == 0 and capsys.readouterr().out.startswith("scvae ")
