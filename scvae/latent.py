"""The model side of perturbation prediction: posterior means of z for groups of cells, decoding latent codes into
cells, the decoder's bias on cells it reconstructs, and the latent shifts of ``method="transport"`` and ``"delta"``
(:func:`scvae.perturbation.predict_perturbation`). Only the model's public core is used."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .conditions import (
    balanced_indices,
    expression_moments,
    move_to_mean,
    neighbour_shift,
    transport_displacements,
    type_groups,
)
from .data import InputError
from .trained import refuse_nonfinite

if TYPE_CHECKING:  # pragma: no cover
    from .trained import SCVAE

logger = logging.getLogger(__name__)


def model_conditions_on(model: SCVAE, condition_key: str, control: str, stimulated: str, *, needed: bool) -> bool:
    """Whether ``model`` is conditioned on ``condition_key`` (as its condition, batch or a covariate), with an
    :class:`InputError` if it is not and ``needed`` (``method="counterfactual"``), or if it does not know
    ``control`` and ``stimulated``."""
    if condition_key not in model.labels.keys:
        if needed:
            raise InputError(
                f"method='counterfactual' needs a model conditioned on {condition_key!r} (the model's labels: "
                f"{model.labels.keys or 'none'}); train one with scvae.model.fit(..., condition_key="
                f"{condition_key!r}) or use method='delta'"
            )
        return False
    known = model.labels.categories[condition_key]
    for name, value in (("control", control), ("stimulated", stimulated)):
        if value not in known:
            raise InputError(f"{name}={value!r} is not a category the model knows for {condition_key!r}: {known}")
    if model.spec.condition_key != condition_key:
        kind = "batch" if model.spec.batch_key == condition_key else "covariate"
        logger.info("the model is conditioned on %r as a %s label", condition_key, kind)
    return True


@torch.no_grad()
def posterior_means(model: SCVAE, x: Any, codes: np.ndarray, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """Posterior mean of z for ``rows`` of ``x`` (encoded with their own labels)."""
    out = [mean.cpu() for _, _, mean, _ in model.encoded(x, codes, batch_size, rows)]
    z = torch.cat(out).numpy() if out else np.zeros((0, model.module.n_latent), dtype=np.float32)
    refuse_nonfinite(z, "latent representation")
    return z


@torch.no_grad()
def decode(
    model: SCVAE,
    z: np.ndarray,
    codes: np.ndarray,
    library: np.ndarray | None,
    batch_size: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws from p(x | z, c, l) and the decoder's expected frequencies (count likelihoods) or mean."""
    device = model.device
    gen = torch.Generator(device=device).manual_seed(seed)
    draws, expected = (np.empty((len(z), model.module.n_genes), dtype=np.float32) for _ in range(2))  # filled in place
    for start in range(0, len(z), batch_size):
        sl = slice(start, start + batch_size)
        zb = torch.from_numpy(np.ascontiguousarray(z[sl], dtype=np.float32)).to(device)
        cb = torch.from_numpy(codes[sl]).to(device)
        lib = None if library is None else torch.from_numpy(library[sl, None].astype(np.float32)).to(device)
        px = model.decoded(zb, cb, lib)
        draws[sl], expected[sl] = px.sample(gen).cpu().numpy(), px.expression().cpu().numpy()
    return draws, expected


def decoder_bias(
    model: SCVAE,
    x: Any,
    z_own: np.ndarray,
    codes: np.ndarray,
    source: np.ndarray,
    library: np.ndarray | None,
    batch_size: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decoder's bias on the ``source`` cells, per gene on the scored scale: their codes ``z_own`` decoded
    without a shift, against their real mean; that bias shrunk where it is within the sampling noise; and the
    decoder's expected frequencies (or means) of those cells (:func:`decode`)."""
    counts = model.module.counts
    own, expected = decode(model, z_own, codes[source], library, batch_size, seed + 1)
    decoded_mean = expression_moments(own, np.arange(len(own)), counts=counts)[0]  # read in chunks, as x is
    bias = decoded_mean - expression_moments(x, source, counts=counts)[0]
    cells = np.unique(source)
    noise = expression_moments(x, cells, counts=counts)[1] / len(cells)  # variance of the cells' mean
    return bias, bias * (np.square(bias) / (np.square(bias) + noise + 1e-12)), expected


def subtract_bias(values: np.ndarray, shrunk: np.ndarray, *, counts: bool) -> np.ndarray:
    """``values`` (predicted cells on the scored scale) less the shrunk bias of :func:`decoder_bias`: log-normalised
    values stay >= 0, a gene too high is scaled down and one too low shifted up (:func:`move_to_mean`)."""
    return move_to_mean(values, values.mean(0) - shrunk, counts=counts)


def transported_shift(
    model: SCVAE,
    x: Any,
    codes: np.ndarray,
    cond: np.ndarray,
    types: np.ndarray,
    z_target: np.ndarray,
    *,
    control: str,
    stimulated: str,
    target: str,
    min_cells: int,
    n_neighbors: int,
    seed: int,
    batch_size: int,
    record: dict[str, Any],
) -> np.ndarray:
    """Displacement of every target control cell for ``method="transport"`` (see :func:`predict_perturbation`)."""
    groups = type_groups(cond, types, control=control, stimulated=stimulated, exclude=[target], min_cells=min_cells)
    anchors, moves = [], []
    for i, (ctrl, stim) in enumerate(groups.values()):
        a, d = transport_displacements(
            posterior_means(model, x, codes, ctrl, batch_size),
            posterior_means(model, x, codes, stim, batch_size),
            seed=seed + i,
        )
        anchors.append(a)
        moves.append(d)
    shift, k = neighbour_shift(np.vstack(anchors), np.vstack(moves), z_target, n_neighbors)
    record.update(
        cell_types=list(groups),
        n_pairs={t: int(len(a)) for t, a in zip(groups, anchors)},
        n_neighbors=int(k),
        mean_shift=[float(v) for v in shift.mean(0)],
    )
    logger.info(
        "transport from %d cell types (%d paired cells), %d neighbours per cell", len(groups), sum(map(len, anchors)), k
    )
    return shift.astype(np.float32)


def balanced_delta(
    model: SCVAE,
    x: Any,
    codes: np.ndarray,
    cond: np.ndarray,
    types: np.ndarray,
    *,
    control: str,
    stimulated: str,
    target: str,
    n_per_type: int | None,
    min_cells: int,
    seed: int,
    batch_size: int,
    record: dict[str, Any],
) -> np.ndarray:
    """δ of ``method="delta"``: mean z(stimulated) − mean z(control) over the other cell types, balanced
    (:func:`~scvae.conditions.balanced_indices`; see :func:`predict_perturbation`)."""
    ctrl_idx, stim_idx, n = balanced_indices(
        cond,
        types,
        control=control,
        stimulated=stimulated,
        exclude=[target],
        n_per_type=n_per_type,
        min_cells=min_cells,
        seed=seed,
    )
    z_ctrl = posterior_means(model, x, codes, np.concatenate(list(ctrl_idx.values())), batch_size)
    z_stim = posterior_means(model, x, codes, np.concatenate(list(stim_idx.values())), batch_size)
    delta = z_stim.mean(0) - z_ctrl.mean(0)
    record.update(
        delta=[float(v) for v in delta],
        delta_norm=float(np.linalg.norm(delta)),
        cell_types=list(ctrl_idx),
        n_per_type=int(n),
    )
    logger.info("δ from %d cell types × %d cells per condition (|δ| = %.3f)", len(ctrl_idx), n, record["delta_norm"])
    return delta
