"""Perturbation prediction against the gene-space baselines on the whole Kang data (all seven cell types with at
least 10 cells per condition, 2,000 HVGs of the training cells), as in ``benchmarks/perturbation_kang.py``:
the stimulated cells of one type are held out and predicted, for two types on which the benchmark measures a
clear advantage over the linear shift (``benchmarks/results/perturbation_kang.md``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy.stats import norm

import scvae
from scvae import tl
from scvae.conditions import expression_moments
from scvae.perturbation import linear_shift

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # two models on the whole Kang data

LABELS = dict(condition_key="condition", control="control", stimulated="stimulated", cell_type_key="cell_type")
FIT = dict(progress_bar=False, seed=0)  # fit's defaults, as in the benchmark
# From benchmarks/results/perturbation_kang_similar.csv (seeds 0-2; the default since 2026-12-07, transport with
# similar=0.5): the lead of the default over the better linear shift in Pearson-delta over the top-100 |change| genes
# (CD14 Mono 0.143-0.153, CD4 T 0.055-0.059) and over the similar-types shift (0.015-0.018 on both), and the coverage
# of those genes' real change by the 90 % intervals (CD14 Mono 0.84-0.96, CD4 T 0.85-0.95). The thresholds leave
# room for the seed spread. The predicted cells are closer to the real stimulated cells than the linear shift's in
# energy distance on CD14 Mono (2.71-2.96 against 5.96-6.16), not on CD4 T (0.46-0.52 against 0.28-0.29).
MEASURED = {
    "CD14 Mono": dict(margin=0.08, coverage=(0.8, 0.99), energy_below_linear=True),
    "CD4 T": dict(margin=0.035, coverage=(0.8, 0.98), energy_below_linear=False),  # not asserted
}


@pytest.fixture(scope="module")
def kang() -> AnnData:
    return scvae.datasets.kang()


@pytest.fixture(scope="module", params=sorted(MEASURED))
def held_out(request, kang) -> dict:
    """Train on everything but the target's stimulated cells; predict them; score every method."""
    import scanpy as sc

    target = request.param
    is_target = (kang.obs["cell_type"] == target).to_numpy()
    is_stim = (kang.obs["condition"] == "stimulated").to_numpy()
    train = kang[~(is_target & is_stim)].copy()
    tmp = AnnData(X=tl.log_normalize(train), var=pd.DataFrame(index=train.var_names.copy()))
    sc.pp.highly_variable_genes(tmp, n_top_genes=2000)
    genes = tmp.var_names[tmp.var["highly_variable"].to_numpy()]
    train = train[:, genes].copy()
    stim, ctrl = kang[is_target & is_stim][:, genes].copy(), kang[is_target & ~is_stim][:, genes].copy()
    model = scvae.model.fit(train, **FIT)
    labels = {**LABELS, "target": target}
    pred = model.predict_perturbation(train, **labels, n_cells=max(1000, ctrl.n_obs), interval=0.9, seed=0)
    scores = {"scvae": tl.evaluate_perturbation(pred, stim, ctrl)}
    top = scores["scvae"]["top_genes"]
    for name, balanced in (("linear", True), ("linear_unbalanced", False)):
        shifted = linear_shift(train, **labels, balanced=balanced, seed=0)
        scores[name] = tl.evaluate_perturbation(shifted, stim, ctrl, top_genes=top, pred_normalized=True)
    similar = linear_shift(train, **labels, similar=True, seed=0)  # the part of the default's change not the model's
    scores["linear_similar"] = tl.evaluate_perturbation(similar, stim, ctrl, top_genes=top, pred_normalized=True)
    scores["no_change"] = tl.evaluate_perturbation(ctrl, stim, ctrl, top_genes=top)
    print(
        target,
        {
            m: {k: round(s[k], 3) for k in ("delta_corr_top_change", "r2_top", "r2_top_change", "energy_distance")}
            for m, s in scores.items()
        },
        {k: round(v, 3) for k, v in scores["scvae"].items() if k.startswith("interval")},
    )
    return {"target": target, "scores": scores, "pred": pred, "stim": stim, "ctrl": ctrl}


def test_default_method_beats_both_linear_shifts_and_no_change(held_out):
    scores, measured = held_out["scores"], MEASURED[held_out["target"]]
    ours = scores["scvae"]
    for score in ("delta_corr_top_change", "delta_corr_top", "r2_top", "r2_top_change"):
        best = max(scores[b][score] for b in ("linear", "linear_unbalanced", "no_change"))
        assert ours[score] > best, score
    best = max(scores[b]["delta_corr_top_change"] for b in ("linear", "linear_unbalanced"))
    assert ours["delta_corr_top_change"] - best > measured["margin"]
    # and the shift from the types most alike, whose change the default mixes in (similar=0.5)
    assert ours["delta_corr_top_change"] - scores["linear_similar"]["delta_corr_top_change"] > 0.005
    if measured["energy_below_linear"]:
        closest = min(scores[b]["energy_distance"] for b in ("linear", "linear_unbalanced"))
        assert ours["energy_distance"] < 0.8 * closest


def test_intervals_cover_the_real_change(held_out):
    res, pred = held_out["scores"]["scvae"], held_out["pred"]
    rec = pred.uns["scvae_perturbation"]["interval"]
    assert rec["level"] == 0.9 and len(rec["type_quantiles"]) == 6 and held_out["target"] not in rec["type_quantiles"]
    assert rec["quantile"] == max(rec["type_quantiles"].values())
    v = pred.var
    assert ((v["change_lower"] <= v["change"]) & (v["change"] <= v["change_upper"])).all()
    # never narrower than the sampling error of a change observed on as many cells as the target's controls
    ctrl = held_out["ctrl"]
    var = expression_moments(ctrl.X, np.arange(ctrl.n_obs), counts=True)[1]
    floor = norm.ppf(0.95) * np.sqrt(2 * var / ctrl.n_obs)
    half = (v["change_upper"] - v["change"]).to_numpy()
    assert (half >= floor - 1e-6).all() and (half > floor + 1e-3).mean() > 0.9  # plus the model's error
    low, high = MEASURED[held_out["target"]]["coverage"]
    assert low <= res["interval_coverage_top_change"] <= high


def test_interval_plot(held_out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scvae.data import InputError

    pred, res = held_out["pred"], held_out["scores"]["scvae"]
    ax = scvae.pl.change_intervals(pred, held_out["stim"], held_out["ctrl"], n_genes=20, title="x")
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == res["top_change"][:20]  # the genes of largest real change, in order
    assert "% inside (90% intervals)" in ax.get_title()
    ax = scvae.pl.change_intervals(pred, genes=["ISG15", "IFI6"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ISG15", "IFI6"]
    plain = pred.copy()
    del plain.var["change_lower"]
    with pytest.raises(InputError, match="interval=0.9"):
        scvae.pl.change_intervals(plain)
    with pytest.raises(InputError, match="real_stim lacks 5 of the predicted genes"):
        scvae.pl.change_intervals(pred, held_out["stim"][:, 5:], held_out["ctrl"])
    plt.close("all")
