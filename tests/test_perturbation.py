"""Perturbation prediction (scGen task) on real data: Kang et al. 2018 PBMCs, three cell types, the HVGs of the
training cells; the stimulated B cells are held out and predicted."""

from __future__ import annotations

import copy

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

import scvae
from scvae import tl
from scvae.data import InputError
from scvae.perturbation import (
    MIN_PREDICTED_CELLS,
    balanced_indices,
    change_intervals,
    linear_shift,
    predict_perturbation,
    type_groups,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # models trained on Kang cells

TYPES = ["CD4 T", "CD14 Mono", "B"]
TARGET = "B"
LABELS = dict(condition_key="condition", control="control", stimulated="stimulated", cell_type_key="cell_type")
FIT = dict(n_latent=10, max_epochs=60, progress_bar=False, seed=0)


@pytest.fixture(scope="module")
def data() -> dict[str, AnnData]:
    """Training cells (everything but stimulated B cells) and the real B cells, on 1,000 HVGs of training."""
    full = scvae.datasets.kang()
    full = full[full.obs["cell_type"].isin(TYPES).to_numpy()].copy()
    is_b = (full.obs["cell_type"] == TARGET).to_numpy()
    is_stim = (full.obs["condition"] == "stimulated").to_numpy()
    train = full[~(is_b & is_stim)].copy()
    import scanpy as sc

    tmp = AnnData(X=tl.log_normalize(train), var=pd.DataFrame(index=train.var_names.copy()))
    sc.pp.highly_variable_genes(tmp, n_top_genes=1000)
    genes = tmp.var_names[tmp.var["highly_variable"].to_numpy()]
    return {
        "train": train[:, genes].copy(),
        "stim": full[is_b & is_stim][:, genes].copy(),
        "ctrl": full[is_b & ~is_stim][:, genes].copy(),
    }


@pytest.fixture(scope="module")
def vae(data):
    return scvae.model.fit(data["train"], **FIT)


@pytest.fixture(scope="module")
def cvae(data):
    return scvae.model.fit(data["train"], condition_key="condition", **FIT)


@pytest.fixture(scope="module")
def top(data) -> list[str]:
    both = AnnData(
        X=sp.vstack([data["stim"].X, data["ctrl"].X]).tocsr(),
        obs=pd.DataFrame(
            {"condition": ["stimulated"] * data["stim"].n_obs + ["control"] * data["ctrl"].n_obs},
            index=[str(i) for i in range(data["stim"].n_obs + data["ctrl"].n_obs)],
        ),
        var=data["stim"].var.copy(),
    )
    return tl.rank_de_genes(both, "condition", "stimulated", "control", n=100)


@pytest.fixture(scope="module")
def no_change(data, top) -> dict:
    return tl.evaluate_perturbation(data["ctrl"], data["stim"], data["ctrl"], top_genes=top)


# -- quality -------------------------------------------------------------------------------------------------------
def test_delta_beats_no_change_on_held_out_type(vae, data, top, no_change):
    pred = vae.predict_perturbation(data["train"], target=TARGET, method="delta", **LABELS)
    res = tl.evaluate_perturbation(pred, data["stim"], data["ctrl"], top_genes=top)
    # measured (seed 0, 60 epochs): no change 0.57 (top-100) / 0.79 (all); delta 0.79 / 0.85, Δ corr. 0.69
    assert res["r2_top"] > no_change["r2_top"] + 0.15
    assert res["r2_all"] > no_change["r2_all"] + 0.03
    assert res["delta_corr_top"] > 0.6
    # the interferon response genes go up in the prediction
    means = res["means"]
    for gene in ("IFIT3", "IFITM3"):  # the interferon-stimulated genes among these 1,000 HVGs (not ISG15, IFI6)
        assert gene in means.index, gene
        assert means.loc[gene, "predicted"] > means.loc[gene, "control"] + 0.5, gene


def test_counterfactual_with_cvae(cvae, data, top, no_change):
    pred = cvae.predict_perturbation(data["train"], target=TARGET, method="counterfactual", **LABELS)
    rec = pred.uns["scvae_perturbation"]
    assert rec["method"] == "counterfactual" and "delta" not in rec and rec["decoded_with_stimulated_label"]
    res = tl.evaluate_perturbation(pred, data["stim"], data["ctrl"], top_genes=top)
    # measured (seed 0, 60 epochs): 0.83 (top-100) / 0.86 (all), Δ corr. 0.84
    assert res["r2_top"] > no_change["r2_top"] + 0.15
    assert res["delta_corr_top"] > 0.7


@pytest.mark.parametrize("which", ["vae", "cvae"])
def test_transport_gives_each_cell_its_own_response(which, request, data, top, no_change):
    model = request.getfixturevalue(which)
    pred = model.predict_perturbation(data["train"], target=TARGET, method="transport", n_neighbors=20, **LABELS)
    rec = pred.uns["scvae_perturbation"]
    assert rec["method"] == "transport" and rec["n_neighbors"] == 20
    assert rec["cell_types"] == ["CD14 Mono", "CD4 T"] and set(rec["n_pairs"]) == {"CD14 Mono", "CD4 T"}
    assert rec["decoded_with_stimulated_label"] == (which == "cvae")
    res = tl.evaluate_perturbation(pred, data["stim"], data["ctrl"], top_genes=top)
    print(
        which,
        {k: round(res[k], 3) for k in ("r2_top", "delta_corr_top", "delta_corr_top_change", "e_distance")},
        {k: round(no_change[k], 3) for k in ("r2_top", "e_distance")},
    )
    assert res["r2_top"] > no_change["r2_top"] + 0.15
    assert res["delta_corr_top_change"] > 0.6 and res["e_distance"] < no_change["e_distance"]


def test_transport_displacements_pair_points_optimally():
    from itertools import permutations

    from scvae.conditions import transport_pairs
    from scvae.perturbation import transport_displacements

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(6, 2)) + 3.0
    anchors, moves = transport_displacements(a, b, max_cells=6)
    np.testing.assert_allclose(np.sort(anchors, axis=0), np.sort(a, axis=0))
    cost = ((moves) ** 2).sum()
    best = min(((b[list(p)] - a) ** 2).sum() for p in permutations(range(6)))
    assert cost == pytest.approx(best)
    anchors, moves = transport_displacements(a, b[:4], max_cells=10)  # the larger set is subsampled
    assert anchors.shape == moves.shape == (4, 2)
    ctrl, stim = transport_pairs(a, b[:4], max_cells=10)  # the same pairs, as rows of each set
    np.testing.assert_array_equal(a[ctrl], anchors)
    np.testing.assert_array_equal(b[:4][stim] - a[ctrl], moves)
    assert sorted(stim) == [0, 1, 2, 3] and len(set(ctrl)) == 4


def test_linear_shift_unbalanced(data):
    balanced = linear_shift(data["train"], target=TARGET, **LABELS)
    unbalanced = linear_shift(data["train"], target=TARGET, balanced=False, **LABELS)
    assert unbalanced.uns["scvae_perturbation"]["balanced"] is False
    with pytest.raises(InputError, match="balanced must be True or False"):
        linear_shift(data["train"], target=TARGET, balanced="no", **LABELS)
    with pytest.raises(InputError, match="with balanced=False drop it"):
        linear_shift(data["train"], target=TARGET, balanced=False, n_per_type=5, **LABELS)
    assert not np.allclose(balanced.X, unbalanced.X)
    # unbalanced: the plain difference of the means of all cells of the other types
    train = data["train"]
    logx = tl.log_normalize(train)
    other = (train.obs["cell_type"] != TARGET).to_numpy()
    stim = (train.obs["condition"] == "stimulated").to_numpy()
    delta = np.asarray(logx[other & stim].mean(0) - logx[other & ~stim].mean(0)).ravel()
    ctrl = tl.log_normalize(data["ctrl"]).toarray()
    np.testing.assert_allclose(unbalanced.X, ctrl + delta, atol=1e-5)


def test_linear_shift_by_similarity(data):
    """similar=True: each other type's own difference of means, weighted by how alike its control cells are."""
    train = data["train"]
    pred = linear_shift(train, target=TARGET, similar=True, **LABELS)
    record = pred.uns["scvae_perturbation"]
    assert record["similar"] is True and record["balanced"] is False and record["cell_types"] == ["CD14 Mono", "CD4 T"]
    w = np.asarray(record["type_weights"])
    assert w.sum() == pytest.approx(1.0) and w[1] > w[0]  # B cells are nearer the T cells than the monocytes
    logx = tl.log_normalize(train)
    types, stim = train.obs["cell_type"].to_numpy(), (train.obs["condition"] == "stimulated").to_numpy()
    change = [
        np.asarray(logx[(types == t) & stim].mean(0) - logx[(types == t) & ~stim].mean(0)).ravel()
        for t in record["cell_types"]
    ]
    ctrl = tl.log_normalize(data["ctrl"]).toarray()
    np.testing.assert_allclose(pred.X, ctrl + w @ np.stack(change), atol=1e-4)
    with pytest.raises(InputError, match="with similar=True drop it"):
        linear_shift(train, target=TARGET, similar=True, n_per_type=5, **LABELS)
    with pytest.raises(InputError, match="similar must be True or False"):
        linear_shift(train, target=TARGET, similar="yes", **LABELS)


def test_linear_shift_baseline(data, top, no_change):
    pred = linear_shift(data["train"], target=TARGET, **LABELS)
    ctrl_mean = tl.gene_means(data["ctrl"])
    delta = pred.uns["scvae_perturbation"]
    assert delta["method"] == "linear_shift" and delta["cell_types"] == ["CD14 Mono", "CD4 T"]
    res = tl.evaluate_perturbation(pred, data["stim"], data["ctrl"], top_genes=top, pred_normalized=True)
    assert res["r2_top"] > no_change["r2_top"]
    # the predicted means are the control means shifted by one vector: changes are the same for every run
    shift = tl.gene_means(pred, normalized=True) - ctrl_mean
    again = tl.gene_means(linear_shift(data["train"], target=TARGET, **LABELS), normalized=True) - ctrl_mean
    np.testing.assert_allclose(shift, again, atol=1e-5)


# -- the result ----------------------------------------------------------------------------------------------------
def test_a_zero_shift_predicts_no_change_once_the_decoders_bias_is_removed(vae, data):
    """Another type's control cells, copied as its 'stimulated' cells, give δ = 0 exactly: the predicted cells are
    then the decoder's reconstruction of the target's control cells, whose error on them is all that an
    uncorrected prediction reports as change."""
    train = data["train"]
    ctrl = train[(train.obs["condition"] == "control").to_numpy() & train.obs["cell_type"].isin([TARGET, "CD4 T"])]
    ctrl = ctrl.copy()
    copy_ = ctrl[(ctrl.obs["cell_type"] != TARGET).to_numpy()].copy()
    copy_.obs_names = [f"{n}-copy" for n in copy_.obs_names]
    copy_.obs["condition"] = "stimulated"
    import anndata as ad

    same = ad.concat([ctrl, copy_])
    same.obs["condition"] = pd.Categorical(same.obs["condition"], categories=["control", "stimulated"])
    n = int((ctrl.obs["cell_type"] == "CD4 T").sum())  # every cell in both conditions
    kw = dict(target=TARGET, method="delta", n_cells=3000, n_per_type=n, cells="decoded", similar=0.0, **LABELS)
    plain = vae.predict_perturbation(same, correct_bias=False, **kw)
    fixed = vae.predict_perturbation(same, **kw)
    rec = fixed.uns["scvae_perturbation"]
    assert rec["delta_norm"] < 1e-5 and rec["cell_types"] == ["CD4 T"]
    assert rec["bias_corrected"] and not plain.uns["scvae_perturbation"]["bias_corrected"]
    assert (plain.X != fixed.X).nnz == 0  # X holds the model's draws either way
    # without the correction the layer is the draws log-normalised, and the change is the decoder's bias
    np.testing.assert_allclose(plain.layers["expression"], tl.log_normalize(plain).toarray(), atol=1e-4)
    control = tl.gene_means(data["ctrl"]).to_numpy()
    np.testing.assert_allclose(plain.var["change"], plain.layers["expression"].mean(0) - control, atol=1e-4)
    bias, left = plain.var["change"].abs().to_numpy(), fixed.var["change"].abs().to_numpy()
    # where the bias is clear of the sampling noise of the control cells' mean, it is removed
    logx = tl.log_normalize(data["ctrl"]).toarray()
    clear = np.square(bias) > 9 * logx.var(0, ddof=1) / len(logx)
    print(
        f"zero shift, {clear.sum()} genes of clear bias: |change| {bias[clear].mean():.3f} → {left[clear].mean():.3f}"
    )
    assert clear.sum() >= 20 and left[clear].mean() < 0.3 * bias[clear].mean()
    assert left.mean() < bias.mean() and left.max() < 0.7 * bias.max()
    assert (fixed.layers["expression"] >= 0).all()
    # the measured cells changed as the model changes them: not at all, so X holds them as they are
    observed = vae.predict_perturbation(same, **{**kw, "cells": "observed"})
    assert (observed.X != same[observed.obs["source_cell"]].X).nnz == 0
    with pytest.raises(InputError, match="correct_bias must be True or False"):
        vae.predict_perturbation(same, correct_bias="yes", **kw)


def test_observed_cells_change_each_measured_count_as_the_model_does():
    """``observed_cells`` on known inputs: an unchanged gene keeps the measured counts, a falling one is thinned
    (never above the measured count, zeros stay zeros), a rising one gains thinned draws of mean after − before."""
    from scvae.conditions import observed_cells

    rng = np.random.default_rng(0)
    real = rng.poisson(4.0, size=(4000, 3)).astype(np.float64)
    real[:, 2] = 0  # gene 2 induced from zero
    before = np.full((4000, 3), 0.1)
    after = before * np.array([1.0, 0.5, 3.0])
    draws = rng.poisson(30.0, size=(4000, 3)).astype(np.float64)
    kw = dict(counts=True, draws=draws, after=after, before=before, seed=1)
    cells, values = observed_cells(sp.csr_matrix(real), np.arange(4000), np.zeros(3), **kw)
    np.testing.assert_array_equal(cells[:, 0], real[:, 0])
    assert (cells[:, 1] <= real[:, 1]).all() and (cells[real[:, 1] == 0, 1] == 0).all()
    assert cells[:, 1].mean() == pytest.approx(0.5 * real[:, 1].mean(), rel=0.05)
    assert cells[:, 2].mean() == pytest.approx(draws[:, 2].mean() * 2 / 3, rel=0.05)  # thinned by 1 − 1/3
    assert np.array_equal(cells, np.round(cells)) and (values == 0).all()  # every gene moved to the mean 0
    again = observed_cells(sp.csr_matrix(real), np.arange(4000), np.zeros(3), **kw)[0]
    np.testing.assert_array_equal(again, cells)  # seeded
    # other likelihoods: the cell's own change added, then the gene moved to the mean
    shifted, moved = observed_cells(real, np.arange(4000), np.ones(3), **{**kw, "counts": False})
    np.testing.assert_allclose(shifted, real + after - before)
    np.testing.assert_allclose(moved.mean(0), 1.0)


def test_observed_cells_keep_the_measured_cells_and_the_decoded_means(vae, data):
    """``cells="observed"``: the measured control cells changed count by count, with the decoded prediction's gene
    means; closer to the real stimulated cells as a whole than the draws, and gene by gene no further from them
    than the draws, unlike moving each gene of the measured cells as a whole (an induced gene turns bimodal)."""
    from scipy.stats import wasserstein_distance

    from scvae.conditions import expression_values, move_to_mean

    kw = dict(target=TARGET, n_cells=500, seed=3, **LABELS)
    decoded = vae.predict_perturbation(data["train"], cells="decoded", **kw)
    observed = vae.predict_perturbation(data["train"], **kw)  # the default
    assert observed.uns["scvae_perturbation"]["cells"] == "observed"
    assert decoded.uns["scvae_perturbation"]["cells"] == "decoded"
    x = observed.X.toarray()
    assert (x >= 0).all() and np.array_equal(x, np.round(x)) and (observed.X != decoded.X).nnz > 0
    source = data["train"][observed.obs["source_cell"]].X.toarray()
    assert abs(x.sum(1).mean() / source.sum(1).mean() - 1) < 0.15  # about the measured library sizes
    np.testing.assert_allclose(observed.var["change"], decoded.var["change"], atol=1e-4)
    d, o = decoded.layers["expression"], observed.layers["expression"]
    np.testing.assert_allclose(o.mean(0), d.mean(0), atol=1e-4)
    assert (o >= 0).all()
    # the same centre (E-distance), but a distribution closer to the real stimulated cells' (energy distance)
    res = {k: tl.evaluate_perturbation(p, data["stim"], data["ctrl"]) for k, p in (("obs", observed), ("dec", decoded))}
    print({k: (round(r["e_distance"], 2), round(r["energy_distance"], 3)) for k, r in res.items()})
    assert res["obs"]["e_distance"] == pytest.approx(res["dec"]["e_distance"], rel=1e-3)
    assert res["obs"]["energy_distance"] < 0.7 * res["dec"]["energy_distance"]
    # gene by gene, over the 20 most changed genes: as close as the draws, closer than the measured cells shifted
    stim = tl.log_normalize(data["stim"][:, vae.genes]).toarray()
    ctrl = tl.log_normalize(data["ctrl"][:, vae.genes]).toarray()
    genes = np.argsort(-np.abs(stim.mean(0) - ctrl.mean(0)))[:20]
    scaled = move_to_mean(expression_values(source, counts=True), d.mean(0), counts=True)
    w = {
        k: np.mean([wasserstein_distance(v[:, g], stim[:, g]) for g in genes])
        for k, v in (("obs", o), ("dec", d), ("scaled", scaled))
    }
    print({k: round(float(v), 3) for k, v in w.items()})
    assert w["obs"] < 1.2 * w["dec"] and w["obs"] < 0.8 * w["scaled"]
    with pytest.raises(InputError, match="cells must be one of"):
        vae.predict_perturbation(data["train"], cells="real", **kw)


def test_output_structure_and_record(vae, data):
    pred = vae.predict_perturbation(data["train"], target=TARGET, method="delta", **LABELS)
    n_ctrl = data["ctrl"].n_obs
    assert n_ctrl < MIN_PREDICTED_CELLS and pred.shape == (MIN_PREDICTED_CELLS, len(vae.genes))  # at least 1,000
    counts = pred.obs["source_cell"].value_counts()
    assert len(counts) == n_ctrl and counts.max() - counts.min() <= 1  # every control cell used equally often
    assert list(pred.var_names) == vae.genes
    x = pred.X.toarray()
    assert np.all(x >= 0) and np.all(x == np.round(x))
    # library sizes come from the source control cells: totals of the draws are close to theirs
    lib = np.asarray(data["train"][pred.obs["source_cell"]].X.sum(1)).ravel()
    assert abs(x.sum(1).mean() / lib.mean() - 1) < 0.1
    np.testing.assert_allclose(pred.layers["expected_frequency"].sum(1), 1.0, rtol=1e-4)
    assert pred.obs["predicted"].all()
    assert (pred.obs["condition"] == "stimulated").all() and (pred.obs["cell_type"] == TARGET).all()
    assert pred.obs_names.is_unique
    rec = pred.uns["scvae_perturbation"]
    assert rec["method"] == "delta" and len(rec["delta"]) == vae.module.config.n_latent
    assert np.isfinite(rec["delta"]).all() and rec["delta_norm"] > 0.1
    assert rec["cell_types"] == ["CD14 Mono", "CD4 T"] and rec["target"] == TARGET
    assert rec["n_per_type"] == 354  # the smallest group: stimulated CD14 Mono
    assert rec["n_control_cells"] == n_ctrl


@pytest.mark.parametrize("cells", ["observed", "decoded"])
def test_similar_mixes_in_the_change_of_the_types_most_alike(vae, data, cells):
    """similar=w: the predicted mean change is (1 − w) of the model's plus w of linear_shift(similar=True)'s."""
    train, args = data["train"], {**LABELS, "target": TARGET, "method": "transport", "cells": cells}
    model_only = vae.predict_perturbation(train, similar=0.0, **args).var["change"].to_numpy()
    half = vae.predict_perturbation(train, similar=0.5, **args)
    gene_space = linear_shift(train, target=TARGET, similar=True, **LABELS)
    shift = tl.gene_means(gene_space, normalized=True) - tl.gene_means(data["ctrl"])
    ctrl_mean = tl.gene_means(data["ctrl"]).to_numpy()
    mean = np.maximum(ctrl_mean + 0.5 * model_only + 0.5 * shift.to_numpy(), 0.0)  # log scale: a mean below 0 is 0
    np.testing.assert_allclose(half.var["change"].to_numpy(), mean - ctrl_mean, atol=1e-4)
    np.testing.assert_allclose(half.layers["expression"].mean(0), half.var["change"] + ctrl_mean, atol=1e-4)
    record = half.uns["scvae_perturbation"]["similar"]
    assert record["weight"] == 0.5 and record["cell_types"] == ["CD14 Mono", "CD4 T"]
    assert record["type_weights"] == pytest.approx(gene_space.uns["scvae_perturbation"]["type_weights"], rel=1e-4)


def test_seeded_and_n_cells(vae, data):
    a = vae.predict_perturbation(data["train"], target=TARGET, seed=1, **LABELS)
    b = vae.predict_perturbation(data["train"], target=TARGET, seed=1, **LABELS)
    c = vae.predict_perturbation(data["train"], target=TARGET, seed=2, **LABELS)
    assert (a.X != b.X).nnz == 0 and (a.X != c.X).nnz > 0
    assert a.uns["scvae_perturbation"]["method"] == "transport"  # the default
    small = vae.predict_perturbation(data["train"], target=TARGET, method="delta", n_cells=20, n_per_type=50, **LABELS)
    assert small.n_obs == 20 and small.uns["scvae_perturbation"]["n_per_type"] == 50
    many = vae.predict_perturbation(data["train"], target=TARGET, n_cells=500, **LABELS)
    assert many.n_obs == 500 and many.obs_names.is_unique


def test_balanced_indices_equal_counts():
    cond = np.array(["c"] * 30 + ["s"] * 20 + ["c"] * 12 + ["s"] * 15 + ["c"] * 3 + ["s"] * 3)
    types = np.array(["A"] * 50 + ["B"] * 27 + ["C"] * 6)
    ctrl, stim, n = balanced_indices(cond, types, control="c", stimulated="s", min_cells=5, seed=0)
    assert n == 12 and list(ctrl) == ["A", "B"]
    for t in ("A", "B"):
        assert len(ctrl[t]) == len(stim[t]) == 12 and len(set(ctrl[t])) == 12
        assert (cond[ctrl[t]] == "c").all() and (cond[stim[t]] == "s").all() and (types[ctrl[t]] == t).all()
    again = balanced_indices(cond, types, control="c", stimulated="s", min_cells=5, seed=0)
    assert all((again[0][t] == ctrl[t]).all() for t in ctrl)


def _snapshot(adata: AnnData) -> dict:
    return {
        "X": adata.X.copy(),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "uns": copy.deepcopy(dict(adata.uns)),
        "obsm": {k: v.copy() for k, v in adata.obsm.items()},
        "layers": list(adata.layers.keys()),
    }


def _assert_same(adata: AnnData, before: dict) -> None:
    assert (adata.X != before["X"]).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, before["obs"])
    pd.testing.assert_frame_equal(adata.var, before["var"])
    assert set(adata.uns) == set(before["uns"])
    assert set(adata.obsm) == set(before["obsm"])
    for k, v in before["obsm"].items():
        np.testing.assert_array_equal(adata.obsm[k], v)
    assert list(adata.layers.keys()) == before["layers"]


def test_input_unchanged(vae, cvae, data, top):
    train, stim, ctrl = data["train"], data["stim"], data["ctrl"]
    before = {k: _snapshot(a) for k, a in data.items()}
    vae.predict_perturbation(train, target=TARGET, **LABELS)
    cvae.predict_perturbation(train, target=TARGET, method="counterfactual", **LABELS)
    linear_shift(train, target=TARGET, **LABELS)
    tl.rank_de_genes(train, "condition", "stimulated", "control", n=10)
    tl.evaluate_perturbation(ctrl, stim, ctrl, n_top=20)
    tl.mean_r2(ctrl, stim)
    for k, a in data.items():
        _assert_same(a, before[k])
    genes = list(stim.var_names[:5])  # with top_genes given, n_top and direction are still checked
    with pytest.raises(InputError, match="n_top must be a positive integer, got 0"):
        tl.evaluate_perturbation(ctrl, stim, ctrl, top_genes=genes, n_top=0)
    with pytest.raises(InputError, match="direction must be one of"):
        tl.evaluate_perturbation(ctrl, stim, ctrl, top_genes=genes, direction="sideways")
    with pytest.raises(InputError, match="n must be a positive integer, got -1"):
        tl.top_changed_genes(pd.DataFrame({"real": [1.0, 2.0], "control": [0.0, 0.0]}), -1)


# -- evaluation and plots ------------------------------------------------------------------------------------------
def test_tl_metrics(data, top):
    stim, ctrl = data["stim"], data["ctrl"]
    assert tl.mean_r2(stim, stim) == pytest.approx(1.0)
    assert 0 < tl.mean_r2(ctrl, stim) < 0.95
    # R² over a gene subset, and the top DEGs of IFN-β are interferon-stimulated genes
    assert tl.mean_r2(ctrl, stim, genes=top) < tl.mean_r2(ctrl, stim)
    assert {"ISG15", "IFI6", "IFIT3", "ISG20", "MX1"} & set(top[:20])
    res = tl.evaluate_perturbation(stim, stim, ctrl, top_genes=top)
    assert res["r2_all"] == pytest.approx(1.0) and res["delta_corr"] == pytest.approx(1.0)
    for key in ("delta_corr_top", "delta_corr_top_change", "r2_top_change", "sign_top", "sign_top_change"):
        assert res[key] == pytest.approx(1.0), key
    assert res["e_distance"] == pytest.approx(0.0, abs=1e-9) and res["energy_distance"] == pytest.approx(0.0, abs=1e-9)
    assert res["wasserstein_top_change"] == pytest.approx(0.0, abs=1e-9)
    # both directions of change are ranked: the top-changed genes include genes that go down
    changed = res["means"].loc[res["top_change"]]
    assert (changed["real"] < changed["control"]).any() and (changed["real"] > changed["control"]).any()
    d = (changed["real"] - changed["control"]).abs().to_numpy()
    assert (np.diff(d) <= 0).all() and d[-1] >= (res["means"]["real"] - res["means"]["control"]).abs().drop(
        res["top_change"]
    ).max()
    # predicting no change: zero Pearson-delta is undefined (no change at all), and the distances are the control's
    none = tl.evaluate_perturbation(ctrl, stim, ctrl, top_genes=top)
    assert np.isnan(none["delta_corr"]) and none["sign_top"] == 0.0
    assert none["e_distance"] == pytest.approx(none["e_distance_control"]) and none["e_distance"] > 1.0
    assert none["energy_distance"] == pytest.approx(none["energy_distance_control"]) and none["energy_distance"] > 0.1
    # gene by gene: scipy's 1-D Wasserstein distance of the log-normalised values, averaged over the top-changed genes
    from scipy.stats import wasserstein_distance

    cols = stim.var_names.get_indexer(none["top_change"])  # normalised over all genes, then the top-changed ones
    s, c = (tl.log_normalize(a).toarray()[:, cols] for a in (stim, ctrl))
    expected = np.mean([wasserstein_distance(c[:, j], s[:, j]) for j in range(len(cols))])
    assert none["wasserstein_top_change"] == pytest.approx(expected) and expected > 0.3
    with pytest.raises(InputError, match="missing"):
        tl.mean_r2(stim, ctrl[:, :10])
    with pytest.raises(InputError, match="max_cells must be a positive integer"):
        tl.evaluate_perturbation(stim, stim, ctrl, top_genes=top, max_cells=0)


def test_e_distances_match_their_definitions():
    from scipy.spatial.distance import cdist
    from scipy.stats import energy_distance

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.normal(loc=0.5, scale=2.0, size=(60, 3))
    e, energy = tl.e_distances(x, y)
    # scPerturb / pertpy: 2 mean d²(X, Y) − mean d²(X, X) − mean d²(Y, Y), which is 2 ‖mean X − mean Y‖²
    sq = 2 * cdist(x, y, "sqeuclidean").mean() - cdist(x, x, "sqeuclidean").mean() - cdist(y, y, "sqeuclidean").mean()
    assert e == pytest.approx(sq) and e == pytest.approx(2 * np.sum((x.mean(0) - y.mean(0)) ** 2))
    eu = 2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean()
    assert energy == pytest.approx(eu)
    # in one dimension, scipy's energy distance is the square root of ours
    e1, energy1 = tl.e_distances(x[:, :1], y[:, :1])
    assert np.sqrt(energy1) == pytest.approx(energy_distance(x[:, 0], y[:, 0]))
    # the energy distance sees a change of spread that the E-distance does not
    same_mean = rng.normal(size=(200, 3)) * 3.0
    same_mean -= same_mean.mean(0) - x.mean(0)
    e2, energy2 = tl.e_distances(x, same_mean)
    assert e2 == pytest.approx(0.0, abs=1e-9) and energy2 > 0.5
    with pytest.raises(InputError, match="must be finite cells × dimensions arrays"):
        tl.e_distances(np.where(x > 2, np.nan, x), y)  # no silent NaN
    with pytest.raises(InputError, match=r"of shapes \(40, 3\), \(60, 2\)"):
        tl.e_distances(x, y[:, :2])


def test_plots(vae, data):
    import matplotlib.pyplot as plt

    pred = vae.predict_perturbation(data["train"], target=TARGET, **LABELS)
    ax = scvae.pl.reg_mean_plot(pred, data["stim"], data["ctrl"], n_top=50, title="B")
    with pytest.raises(InputError, match="n_labels must be a non-negative integer, got 'x'"):
        scvae.pl.reg_mean_plot(pred, data["stim"], data["ctrl"], n_labels="x")
    assert "R²" in ax.get_legend().get_texts()[0].get_text() and len(ax.texts) == 10
    gene = "ISG15" if "ISG15" in pred.var_names else str(pred.var_names[0])
    ax = scvae.pl.perturbation_violin(pred, data["stim"], data["ctrl"], gene)
    assert len(ax.get_xticklabels()) == 3
    with pytest.raises(InputError, match="not among the predicted genes"):
        scvae.pl.perturbation_violin(pred, data["stim"], data["ctrl"], "NOT_A_GENE")
    res = tl.evaluate_perturbation(pred, data["stim"], data["ctrl"])
    none = tl.evaluate_perturbation(data["ctrl"], data["stim"], data["ctrl"], top_genes=res["top_genes"])
    ax = scvae.pl.perturbation_scores({"no change": none, "delta": res})
    assert len(ax.patches) == 2 * len(scvae.pl.PERTURBATION_SCORES) and len(ax.get_xticklabels()) == 5
    heights = [p.get_height() for p in ax.patches]
    assert heights[5] == pytest.approx(res["delta_corr_top_change"])  # bars of the second result follow the first's
    with pytest.raises(InputError, match="no \\['e_distance'\\]"):
        scvae.pl.perturbation_scores({"x": {"r2_top": 1.0}}, metrics=["r2_top", "e_distance"])
    plt.close("all")


# -- bad input -----------------------------------------------------------------------------------------------------
def _with(adata: AnnData, **changes) -> AnnData:
    out = adata.copy()
    for key, value in changes.items():
        out.obs[key] = value
    return out


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(condition_key="stim"), "condition_key='stim' is not a column of adata.obs"),
        (dict(cell_type_key="celltype"), "cell_type_key='celltype' is not a column"),
        (dict(control="ctrl"), "control='ctrl' is not a category of adata.obs\\['condition'\\]"),
        (dict(stimulated="IFNB"), "stimulated='IFNB' is not a category"),
        (dict(stimulated="control"), "must be different categories"),
        (dict(target="NK"), "target='NK' is not a cell type"),
        (dict(method="scgen"), "method must be one of"),
        (dict(n_cells=0), "n_cells must be a positive integer"),
        (dict(min_cells=10_000), "'B' has only 142 'control' cells, fewer than min_cells=10000"),
        (dict(n_per_type=-1), "n_per_type must be a positive integer"),
        (dict(method="transport", n_neighbors=0), "n_neighbors must be a positive integer"),
        (dict(method="transport", min_cells=0), "min_cells must be a positive integer"),
        (dict(method="counterfactual"), "needs a model conditioned on 'condition'"),
        (dict(interval=1.5), r"interval \(a level.*must be a number in \(0, 1\)"),
        (dict(interval=True), r"interval \(a level.*must be a number in \(0, 1\)"),
        (dict(interval=0.9, interval_genes=0), "interval_genes must be a positive integer"),
        (dict(interval=0.9), "needs at least 3 cell types besides 'B'"),  # only CD4 T and CD14 Mono here
        (dict(similar=1.5), "similar is a weight from 0 to 1"),
        (dict(similar=True), "similar must be a number"),
    ],
)
def test_bad_arguments(vae, data, kwargs, message):
    args = {**LABELS, "target": TARGET, **kwargs}
    with pytest.raises(InputError, match=message):
        vae.predict_perturbation(data["train"], **args)


@pytest.mark.parametrize("level", [1.5, 0.0, True, "0.9"])
def test_change_intervals_refuses_a_level_outside_0_1(vae, data, level):
    with pytest.raises(InputError, match=r"level \(e\.g\. 0\.9\) must be a number in \(0, 1\)"):
        change_intervals(vae, data["train"], target=TARGET, level=level, **LABELS)


def test_messages_name_the_argument_that_holds_the_bad_data(data):
    """evaluate_perturbation takes three AnnData objects: an error says which one is at fault."""
    stim, ctrl = data["stim"], data["ctrl"]
    for which in ("real_stim", "real_ctrl", "pred"):
        args = {"pred": ctrl.copy(), "real_stim": stim.copy(), "real_ctrl": ctrl.copy()}
        bad = args[which]
        bad.X = bad.X.toarray() if hasattr(bad.X, "toarray") else bad.X.copy()
        bad.X[0, 0] = np.nan
        with pytest.raises(InputError, match=f"^{which}\\.X contains NaN"):
            tl.evaluate_perturbation(args["pred"], args["real_stim"], args["real_ctrl"])


def test_bad_data(vae, cvae, data):
    import anndata as ad

    train = data["train"]
    only_stim = ad.concat([train[(train.obs["cell_type"] != TARGET).to_numpy()], data["stim"]])
    with pytest.raises(InputError, match="'B' has no 'control' cells"):
        vae.predict_perturbation(only_stim, target=TARGET, **LABELS)
    no_ctrl = train[~((train.obs["cell_type"] == TARGET) & (train.obs["condition"] == "control")).to_numpy()].copy()
    with pytest.raises(InputError, match="target='B' is not a cell type"):
        vae.predict_perturbation(no_ctrl, target=TARGET, **LABELS)
    b_ctrl = np.flatnonzero(((train.obs["cell_type"] == TARGET) & (train.obs["condition"] == "control")).to_numpy())
    few = train[np.setdiff1d(np.arange(train.n_obs), b_ctrl[5:])].copy()
    with pytest.raises(InputError, match="'B' has only 5 'control' cells, fewer than min_cells=10"):
        vae.predict_perturbation(few, target=TARGET, **LABELS)
    assert vae.predict_perturbation(few, target=TARGET, min_cells=5, n_cells=5, **LABELS).n_obs == 5
    with pytest.raises(InputError, match="has only 5 'control' cells"):
        linear_shift(few, target=TARGET, **LABELS)
    cond, types = train.obs["condition"].astype(str).to_numpy(), train.obs["cell_type"].astype(str).to_numpy()
    with pytest.raises(InputError, match="no cell type other than \\['B'\\] has at least 600 cells"):
        type_groups(cond, types, control="control", stimulated="stimulated", exclude=["B"], min_cells=600)
    with pytest.raises(InputError, match="5 of the model's 1000 genes are missing from adata.var_names"):
        vae.predict_perturbation(train[:, 5:].copy(), target=TARGET, **LABELS)
    logged = train.copy()
    logged.X = scvae.tl.log_normalize(train)
    with pytest.raises(InputError, match="non-integer values, but likelihood='nb' models raw counts"):
        vae.predict_perturbation(logged, target=TARGET, **LABELS)
    negative = train.copy()
    negative.X = negative.X.toarray() if hasattr(negative.X, "toarray") else negative.X.copy()
    negative.X[0, 0] = -1
    for fn in (vae.predict_perturbation, linear_shift):
        with pytest.raises(InputError, match="negative values"):
            fn(negative, target=TARGET, **LABELS)
    nan = _with(train, condition=train.obs["condition"].astype(object).where(np.arange(train.n_obs) > 0))
    with pytest.raises(InputError, match="missing values"):
        vae.predict_perturbation(nan, target=TARGET, **LABELS)
    renamed = _with(train, condition=train.obs["condition"].astype(str).replace({"stimulated": "IFN"}))
    with pytest.raises(InputError, match="not a category the model knows"):
        cvae.predict_perturbation(renamed, target=TARGET, method="counterfactual", **{**LABELS, "stimulated": "IFN"})
    with pytest.raises(InputError, match="expected an AnnData"):
        predict_perturbation(vae, train.X, target=TARGET, **LABELS)
