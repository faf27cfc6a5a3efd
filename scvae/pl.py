"""Plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    from anndata import AnnData
    from matplotlib.axes import Axes

    from .model import SCVAE


def history(model: SCVAE, *, ax: Sequence[Axes] | None = None) -> Sequence[Axes] | np.ndarray:
    """Per-epoch ELBO (train and validation), reconstruction log-likelihood and KL, one panel each, with the
    epoch whose weights were kept marked.

    Parameters
    ----------
    model
        A trained model.
    ax
        Three matplotlib axes to draw in (default: a new figure).

    Returns
    -------
    The three matplotlib axes."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from .data import InputError

    hist = getattr(model, "history", None)
    if not isinstance(hist, pd.DataFrame) or hist.empty:
        raise InputError("model has no training history: pass a model returned by scvae.model.fit (or loaded)")
    if ax is None:
        _, ax = plt.subplots(1, 3, figsize=(12, 3.2))
    elif np.size(ax) != 3:
        raise InputError(f"ax must be three matplotlib axes, e.g. plt.subplots(1, 3)[1]; got {np.size(ax)}")
    for a, metric, title in zip(
        ax, ("elbo", "reconstruction", "kl"), ("ELBO per cell", "reconstruction log-lik. per cell", "KL per cell")
    ):
        for split, style in (("train", "-"), ("validation", "--")):
            col = f"{metric}_{split}"
            if col in hist:
                a.plot(hist["epoch"], hist[col], style, label=split)
        a.set_title(title)
        a.set_xlabel("epoch")
        a.legend()
    best = model.record.best_epoch
    if best:
        for a in ax:
            a.axvline(best, color="grey", lw=0.8, ls=":")
    return ax


def reg_mean_plot(
    pred: AnnData,
    real_stim: AnnData,
    real_ctrl: AnnData,
    *,
    n_top: int = 100,
    top_genes: Sequence[str] | None = None,
    n_labels: int = 10,
    pred_normalized: bool = False,
    result: dict[str, Any] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Predicted vs real mean log-normalised expression of every gene (scGen's reg-mean plot).

    Each point is a gene: x its mean over the real stimulated cells, y over the predicted cells. The top
    ``n_top`` DEGs (real stimulated vs control, see :func:`scvae.tl.evaluate_perturbation`) are highlighted
    and the first ``n_labels`` of them named; the legend gives R² (squared Pearson correlation of the means)
    over all genes and over the top DEGs.

    Parameters
    ----------
    pred, real_stim, real_ctrl
        Predicted cells (read as :func:`scvae.tl.evaluate_perturbation` reads them: ``layers["expression"]`` when
        it is there, else counts in ``X``, or log-normalised values with ``pred_normalized=True``) and the real
        stimulated and control cells of the same cell type (counts).
    n_top, top_genes
        Number of top DEGs to find, or the genes to highlight (genes of ``pred``). Ignored with ``result``.
    n_labels
        How many of the top DEGs to name on the plot.
    pred_normalized
        ``pred.X`` holds log-normalised values (as for :func:`scvae.tl.evaluate_perturbation`). Ignored with
        ``result``.
    result
        The dict of :func:`scvae.tl.evaluate_perturbation` for these cells, to avoid computing it again; its
        ``means``, ``top_genes``, ``r2_all`` and ``r2_top`` are drawn.
    ax
        A matplotlib axes to draw in (default: a new figure).
    title
        Title of the axes (default: none).

    Returns
    -------
    The matplotlib axes.
    """
    import matplotlib.pyplot as plt

    from .data import check_int
    from .tl import evaluate_perturbation

    n_labels = check_int("n_labels", n_labels, 0)
    if result is None:
        result = evaluate_perturbation(
            pred, real_stim, real_ctrl, n_top=n_top, top_genes=top_genes, pred_normalized=pred_normalized
        )
    means, top = result["means"], list(result["top_genes"])
    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.scatter(means["real"], means["predicted"], s=6, c="0.7", lw=0, label=f"all genes: R² = {result['r2_all']:.3f}")
    ax.scatter(
        means.loc[top, "real"],
        means.loc[top, "predicted"],
        s=10,
        c="tab:red",
        lw=0,
        label=f"top {len(top)} DEGs: R² = {result['r2_top']:.3f}",
    )
    hi = float(max(means["real"].max(), means["predicted"].max())) * 1.05
    ax.plot([0, hi], [0, hi], color="k", lw=0.7, ls="--")
    for gene in top[:n_labels]:
        ax.annotate(
            gene,
            (means.loc[gene, "real"], means.loc[gene, "predicted"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("mean expression, real stimulated (log-norm.)")
    ax.set_ylabel("mean expression, predicted (log-norm.)")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return ax


def perturbation_violin(
    pred: AnnData,
    real_stim: AnnData,
    real_ctrl: AnnData,
    gene: str,
    *,
    pred_normalized: bool = False,
    labels: tuple[str, str, str] = ("control", "stimulated\n(real)", "stimulated\n(predicted)"),
    ax: Axes | None = None,
    seed: int = 0,
) -> Axes:
    """Violins of one gene's log-normalised expression in the real control, real stimulated and predicted
    cells (each normalised over ``pred``'s genes, and the prediction read as
    :func:`scvae.tl.evaluate_perturbation` reads it), each cell a jittered point.

    Parameters
    ----------
    pred, real_stim, real_ctrl
        Predicted cells (from ``predict_perturbation``), the real stimulated and the real control cells.
    gene
        The gene drawn.
    pred_normalized
        ``pred.X`` is already log-normalised (as for :func:`scvae.tl.evaluate_perturbation`).
    labels
        Names of the three violins.
    ax
        A matplotlib axes to draw in (default: a new figure). Its title is set to ``gene``.
    seed
        Seeds the horizontal jitter of the points.

    Returns
    -------
    The matplotlib axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from .data import InputError, check_seed, log_normalize
    from .scoring import prediction_matrix

    seed = check_seed(seed)

    genes = [str(g) for g in pred.var_names]
    if gene not in genes:
        raise InputError(f"gene {gene!r} is not among the predicted genes (e.g. {genes[:5]})")
    values = []
    for adata in (real_ctrl, real_stim, pred):
        if gene not in adata.var_names:
            raise InputError(f"gene {gene!r} is missing from one of the AnnData given")
        sub = adata[:, genes]
        x = prediction_matrix(sub, pred_normalized) if adata is pred else log_normalize(sub)
        col = x[:, genes.index(gene)]
        values.append(np.asarray(col.toarray() if hasattr(col, "toarray") else col, dtype=float).ravel())
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.4))
    parts = ax.violinplot(values, showmeans=True, showextrema=False)
    for body, color in zip(parts["bodies"], ("tab:blue", "tab:orange", "tab:green")):
        body.set_facecolor(color)
        body.set_alpha(0.6)
    rng = np.random.default_rng(seed)
    for i, v in enumerate(values, start=1):
        ax.scatter(i + rng.uniform(-0.08, 0.08, len(v)), v, s=2, c="k", alpha=0.3, lw=0)
    ax.set_xticks([1, 2, 3], labels)
    ax.set_ylabel(f"{gene} (log-norm.)")
    ax.set_title(gene)
    return ax


def volcano(de: pd.DataFrame, *, n_labels: int = 15, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Volcano plot of a table from :meth:`scvae.model.SCVAE.differential_expression`: posterior mean log2 fold
    change (x) against the log Bayes factor of a change (y), genes called DE (``is_de``) in colour and the
    ``n_labels`` strongest (highest Bayes factor, then largest |fold change|) named.

    Parameters
    ----------
    de
        The table, indexed by gene, with columns ``lfc_mean``, ``bayes_factor`` and ``is_de`` (and ``group1``,
        ``group2`` for the default title).
    n_labels
        How many genes to name (among all genes, DE or not).
    ax
        A matplotlib axes to draw in (default: a new figure).
    title
        Title of the axes; default (None): ``"<group1> vs <group2>"`` from the table's columns, or none if it has
        no ``group1`` column. ``""`` draws none.

    Returns
    -------
    The matplotlib axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from .data import InputError, check_int

    n_labels = check_int("n_labels", n_labels, 0)
    for col in ("lfc_mean", "bayes_factor", "is_de"):
        if not isinstance(de, pd.DataFrame) or col not in de:
            raise InputError(f"de has no {col!r} column; pass the table of model.differential_expression")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.2))
    called = de["is_de"].to_numpy(bool)
    ax.scatter(
        de["lfc_mean"][~called], de["bayes_factor"][~called], s=4, c="lightgrey", label="not DE", rasterized=True
    )
    ax.scatter(
        de["lfc_mean"][called],
        de["bayes_factor"][called],
        s=6,
        c="crimson",
        label=f"DE ({called.sum()})",
        rasterized=True,
    )
    order = np.lexsort((-de["lfc_mean"].abs().to_numpy(), -de["bayes_factor"].to_numpy()))[:n_labels]
    for i in order:
        ax.annotate(
            str(de.index[i]),
            (de["lfc_mean"].iloc[i], de["bayes_factor"].iloc[i]),
            fontsize=7,
            xytext=(2, 2),
            textcoords="offset points",
        )
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_xlabel("posterior mean log2 fold change")
    ax.set_ylabel("log Bayes factor of a change")
    if title is None and "group1" in de:
        title = f"{de['group1'].iloc[0]} vs {de['group2'].iloc[0]}"
    ax.set_title(title or "")
    ax.legend(loc="lower right", fontsize=7)
    return ax


PERTURBATION_SCORES = ("delta_corr_top_change", "delta_corr_top", "r2_top_change", "r2_top", "sign_top_change")


def perturbation_scores(
    scores: Mapping[str, Mapping[str, Any]],
    *,
    metrics: Sequence[str] = PERTURBATION_SCORES,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Grouped bars of perturbation scores: one group per metric, one bar per prediction.

    Parameters
    ----------
    scores
        ``{name: result}``, each result a dict of :func:`scvae.tl.evaluate_perturbation` (or any mapping from
        metric names to numbers), e.g. ``{"no change": ..., "linear shift": ..., "scvae": ...}``.
    metrics
        Keys of the results to draw, in order. The default are those between -1 and 1 (Pearson-delta, R², sign
        agreement); draw the distances (``"e_distance"``, ``"energy_distance"``, ``"wasserstein_top_change"``, lower
        is better) on their own.
    ax
        A matplotlib axes to draw in (default: a new figure).
    title
        Title of the axes (default: none).

    Returns
    -------
    The matplotlib axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from .data import InputError

    if not scores:
        raise InputError("scores is empty; pass {name: scvae.tl.evaluate_perturbation(...)} for each prediction")
    metrics = list(metrics)
    for name, result in scores.items():
        missing = [m for m in metrics if m not in result]
        if missing:
            raise InputError(f"the result for {name!r} has no {missing}; is it from scvae.tl.evaluate_perturbation?")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 1.3 * len(metrics), 3.4))
    width = 0.8 / len(scores)
    x = np.arange(len(metrics))
    for i, (name, result) in enumerate(scores.items()):
        values = [float(result[m]) for m in metrics]
        ax.bar(x + (i - (len(scores) - 1) / 2) * width, values, width, label=str(name))
    ax.set_xticks(x, [m.replace("_", " ") for m in metrics], rotation=20, ha="right")
    ax.axhline(0, color="k", lw=0.6)
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return ax


def change_intervals(
    pred: AnnData,
    real_stim: AnnData | None = None,
    real_ctrl: AnnData | None = None,
    *,
    n_genes: int = 30,
    genes: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Predicted mean change of the top genes with their intervals, and the real change where it is known.

    Parameters
    ----------
    pred
        From :func:`scvae.perturbation.predict_perturbation` with ``interval=...`` (``var`` has ``change``,
        ``change_lower`` and ``change_upper``).
    real_stim, real_ctrl
        The real stimulated and control cells of the type (counts), if known: their change is drawn as dots
        (filled inside the interval, open outside; as :func:`scvae.tl.evaluate_perturbation` computes it).
    n_genes, genes
        Draw the ``n_genes`` genes of largest |real change| (largest |predicted change| without real cells), or
        the ``genes`` given (genes of ``pred``, in their order; ``n_genes`` is then ignored).
    ax
        A matplotlib axes to draw in (default: a new figure).
    title
        Title of the axes (default: none). With real cells the share of drawn genes whose real change is inside
        its interval (and the level, when ``pred`` records it) is appended, or is the title alone without one.

    Returns
    -------
    The matplotlib axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from .data import InputError

    missing = [c for c in ("change", "change_lower", "change_upper") if c not in pred.var]
    if missing:
        raise InputError(
            f"pred.var has no {missing}; predict with scvae.perturbation.predict_perturbation(..., interval=0.9)"
        )
    if (real_stim is None) != (real_ctrl is None):
        raise InputError("pass both real_stim and real_ctrl, or neither")
    var = pred.var.copy()
    var.index = var.index.astype(str)
    real = None
    if real_stim is not None:  # the real change as evaluate_perturbation computes it (over pred's genes)
        from .tl import gene_means, top_changed_genes

        names = list(var.index)
        for what, cells in (("real_stim", real_stim), ("real_ctrl", real_ctrl)):
            absent = [g for g in names if g not in cells.var_names]
            if absent:
                raise InputError(f"{what} lacks {len(absent)} of the predicted genes (e.g. {absent[:5]})")
        means = pd.DataFrame({"real": gene_means(real_stim[:, names]), "control": gene_means(real_ctrl[:, names])})
        real = means["real"] - means["control"]
    if genes is None and real is not None:
        genes = top_changed_genes(means, n_genes)
    elif genes is None:
        genes = list(var["change"].abs().sort_values(ascending=False, kind="stable").index[:n_genes])
    else:
        genes = [str(g) for g in genes]
        absent = [g for g in genes if g not in var.index]
        if absent:
            raise InputError(f"genes {absent[:5]} are not among the predicted genes")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.22 * len(genes) + 1.5), 3.4))
    x = np.arange(len(genes))
    v = var.loc[genes]
    ax.errorbar(
        x,
        v["change"],
        yerr=[v["change"] - v["change_lower"], v["change_upper"] - v["change"]],
        fmt="s",
        ms=3,
        color="tab:blue",
        elinewidth=1,
        capsize=2,
        label="predicted (interval)",
    )
    if real is not None:
        r = real.loc[genes]
        inside = ((r >= v["change_lower"]) & (r <= v["change_upper"])).to_numpy()
        ax.scatter(x[inside], r[inside], s=14, c="tab:red", zorder=3, label="real, inside")
        ax.scatter(
            x[~inside], r[~inside], s=14, facecolors="none", edgecolors="tab:red", zorder=3, label="real, outside"
        )
        level = pred.uns.get("scvae_perturbation", {}).get("interval", {}).get("level")
        share = f"{inside.mean():.0%} inside" + (f" ({level:.0%} intervals)" if level else "")
        ax.set_title(f"{title}: {share}" if title else share)
    elif title:
        ax.set_title(title)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, genes, rotation=90, fontsize=7)
    ax.set_ylabel("mean change (log-norm.)")
    ax.legend(fontsize=7, frameon=False)
    return ax
