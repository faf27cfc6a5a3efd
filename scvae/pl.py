"""Plots."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .model import SCVAE


def history(model: SCVAE, ax=None):
    """Per-epoch ELBO (train and validation), reconstruction log-likelihood and KL, one panel each.

    Returns the matplotlib axes."""
    import matplotlib.pyplot as plt

    hist = model.history
    if hist.empty:
        raise ValueError("the model has no training history (was it trained?)")
    if ax is None:
        _, ax = plt.subplots(1, 3, figsize=(12, 3.2))
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
    best = model.config.get("best_epoch")
    if best:
        for a in ax:
            a.axvline(best, color="grey", lw=0.8, ls=":")
    return ax
