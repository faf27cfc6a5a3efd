"""A trained model: :class:`SCVAE` holds the network and what it needs to read AnnData, embeds, decodes and samples
new cells with the same genes, and saves to / loads from a folder (:func:`load`). :func:`scvae.model.fit` makes one.

Nothing is registered on ``adata``: what the model reads (genes, the layer, label columns and their category
orders) is its :class:`~scvae.data.DataSpec`; the network is built from its :class:`~scvae.module.ModuleConfig`;
how it was trained is its :class:`~scvae.settings.TrainSettings`. All three are saved in ``scvae.json`` beside the
weights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .data import (
    CategoryEncoder,
    DataSpec,
    InputError,
    align_genes,
    check_bool,
    check_int,
    check_number,
    check_seed,
    get_matrix,
    uns_key,
)
from .likelihoods import Likelihood
from .loaders import Minibatch, is_backed_matrix, to_dense_float
from .module import VAE, ModuleConfig, reparameterize
from .settings import TrainSettings
from .stores import check_labels, collection_matrix, is_collection, validate
from .version import __version__

logger = logging.getLogger(__name__)

LATENT_KEY = "X_scvae"  # the obsm key fit, map_query and the command line write the latent to by default

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "scvae.json"
FORMAT_VERSION = 2  # 1: one flat "config" dict (scvae 0.1.0 before the typed settings); still read


@dataclass
class TrainingRecord:
    """What training produced: epochs run, the epoch whose weights were kept, and for a model made by
    :func:`scvae.mapping.map_query` the record of the reference and the query training."""

    epochs_trained: int = 0
    best_epoch: int = 0
    mapped_from: dict[str, Any] | None = None


class SCVAE:
    """A trained (conditional) VAE and what it needs to read AnnData.

    ``spec`` (genes, layer, labels), ``module`` (the network; its settings in ``module.config``), ``settings``
    (how it was trained), ``record`` and ``history`` (per-epoch ELBO). Create one with :func:`scvae.model.fit` or
    :func:`load`."""

    def __init__(
        self,
        module: VAE,
        spec: DataSpec,
        settings: TrainSettings | None = None,
        record: TrainingRecord | None = None,
        history: pd.DataFrame | None = None,
    ) -> None:
        self.module, self.spec, self.settings, self.record = module, spec, settings, record or TrainingRecord()
        self.history = history if history is not None else pd.DataFrame()
        self.labels = CategoryEncoder(spec.categories)

    # -- description ---------------------------------------------------------------------------------------
    @property
    def genes(self) -> list[str]:
        return self.spec.genes

    @property
    def likelihood(self) -> str:
        return self.module.config.likelihood

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return next(self.module.parameters()).device

    def __repr__(self) -> str:
        c = self.module.config
        labels = ", ".join(f"{k} ({len(v)})" for k, v in self.spec.categories.items()) or "none"
        return (
            f"SCVAE: {c.likelihood} likelihood, {c.n_genes} genes, latent {c.n_latent}, {c.n_layers}×{c.n_hidden} "
            f"hidden; labels: {labels}; trained {self.record.epochs_trained} epochs"
        )

    # -- reading AnnData -------------------------------------------------------------------------------------
    def read(
        self, adata: AnnData, overrides: dict[str, str] | None = None, *, name: str = "adata"
    ) -> tuple[Any, np.ndarray]:
        """The model's genes of ``adata``, in the model's order and validated for its likelihood, and the label
        codes of every cell (``overrides``: {label: category} to encode every cell with); messages call the
        AnnData ``name`` (the caller's argument, e.g. ``"query"``)."""
        if is_collection(adata):
            check_labels(adata, self.labels.keys)
            x = collection_matrix(adata, self.spec.layer, self.genes)  # each file's genes, in the model's order
        else:
            x = get_matrix(adata, self.spec.layer, name)
            idx = align_genes(adata, self.genes, name)
            if idx is not None and is_backed_matrix(x):
                raise InputError(
                    f"{name} is backed (on disk) and its genes are not the model's, in the model's order; selecting "
                    "genes would read the whole matrix. Load the model's genes into memory first: "
                    f"{name} = {name}[:, model.genes].to_memory()"
                )
            x = x if idx is None else x[:, idx]
        validate(x, self.likelihood, counts=self.module.counts, where=self.spec.where(name))
        return x, self.labels.encode(adata, overrides, name)

    def batches(
        self, x: Any, codes: np.ndarray, batch_size: int, rows: np.ndarray | None = None
    ) -> Iterator[Minibatch]:
        """Consecutive minibatches of ``read``'s matrix and codes (of its ``rows``, default all, in order), as
        tensors on the model's device."""
        device = self.device
        batch_size = check_int("batch_size", batch_size)
        for start in range(0, x.shape[0] if rows is None else len(rows), batch_size):
            r = slice(start, start + batch_size) if rows is None else rows[start : start + batch_size]
            xb = torch.from_numpy(to_dense_float(x, r)).to(device)
            yield Minibatch(xb, torch.from_numpy(codes[r]).to(device))

    def encoded(
        self, x: Any, codes: np.ndarray, batch_size: int, rows: np.ndarray | None = None
    ) -> Iterator[tuple[int, Minibatch, torch.Tensor, torch.Tensor]]:
        """For each of :meth:`batches`, its first position, the minibatch, and the mean and log-variance of
        q(z | x) (the network in eval mode; call under ``torch.no_grad()``)."""
        self.module.eval()
        for i, batch in enumerate(self.batches(x, codes, batch_size, rows)):
            mean, logvar = self.module.inference(batch)
            yield i * batch_size, batch, mean, logvar

    def decoded(self, z: torch.Tensor, codes: torch.Tensor, library: torch.Tensor | None = None) -> Likelihood:
        """p(x | z, c) for latent codes ``z`` and label codes ``codes`` (tensors on the model's device), scaled to
        ``library`` (cells × 1) for count likelihoods, else to 1 (the mean is then the expected frequency); the
        network in eval mode (call under ``torch.no_grad()``)."""
        if self.module.training:  # once, not at every minibatch of a loop
            self.module.eval()
        return self.module.generative(z, codes, library)

    def _decode_codes(self, adata: AnnData, transform_batch: str | dict[str, str] | None) -> np.ndarray:
        if transform_batch is not None and not isinstance(transform_batch, dict):
            if self.spec.batch_key is None:
                raise InputError(
                    "transform_batch given as a single category, but the model has no batch_key; pass a dict "
                    f"{{key: category}} with a key of {self.labels.keys or 'its labels (it has none)'}"
                )
            transform_batch = {self.spec.batch_key: transform_batch}
        return self.labels.encode(adata, transform_batch)

    # -- outputs ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def get_latent(
        self, adata: AnnData, *, give_mean: bool = True, batch_size: int = 1024, seed: int = 0
    ) -> np.ndarray:
        """Latent representation of every cell of ``adata``.

        Parameters
        ----------
        adata
            Cells with the model's genes (matched by name, in any order; extra genes are ignored; a backed
            AnnData or zarr store must hold exactly the model's genes in its order) and the labels it is
            conditioned on; in memory, backed, a zarr store or a collection of files.
        give_mean
            Return the posterior mean of q(z | x); otherwise one draw from it, seeded by ``seed``.
        batch_size
            Cells per forward pass; seeded draws depend on it (the same seed and batch_size give the same result).
        seed
            Seeds the draw (``give_mean=False``).

        Returns
        -------
        float32 array, cells × ``n_latent``, in the order of ``adata``'s cells."""
        seed, give_mean = check_seed(seed), check_bool("give_mean", give_mean)
        x, codes = self.read(adata)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        # written into one array made up front: no pile of small per-batch arrays between the large temporaries
        z = np.empty((x.shape[0], self.module.n_latent), dtype=np.float32)
        for start, _, mean, logvar in self.encoded(x, codes, batch_size):
            if not give_mean:
                eps = torch.randn(mean.shape, generator=gen, device=mean.device, dtype=mean.dtype)
                mean = reparameterize(mean, logvar, eps)
            z[start : start + len(mean)] = mean.cpu().numpy()
        refuse_nonfinite(z, "latent representation")
        return z

    @torch.no_grad()
    def get_normalized_expression(
        self,
        adata: AnnData,
        *,
        transform_batch: str | dict[str, str] | None = None,
        library_size: float = 1.0,
        n_samples: int = 1,
        batch_size: int = 1024,
        seed: int = 0,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised expression of every cell: the decoder's mean, from the posterior mean of z (``n_samples=1``)
        or averaged over ``n_samples`` draws of z.

        For count likelihoods this is the expected frequency of each gene times ``library_size`` (1: rows sum
        to 1; 1e4: comparable to ``sc.pp.normalize_total``). For ``gaussian`` it is the mean, for ``bernoulli``
        the probability of detection.

        Parameters
        ----------
        adata
            Cells, as for :meth:`get_latent`.
        transform_batch
            Decode every cell as if it came from another batch or condition (counterfactual): a category of
            ``batch_key``, or a dict ``{obs key: category}`` for any label the model is conditioned on. The
            encoder still sees each cell's own labels.
        library_size
            Scale of count likelihoods' expression (see above).
        n_samples
            Draws of z averaged (1: the posterior mean alone).
        batch_size
            Cells per forward pass; seeded draws depend on it (the same seed and batch_size give the same result).
        seed
            Seeds the draws of z.
        return_numpy
            Return the float32 array instead of a DataFrame.

        Returns
        -------
        cells × genes DataFrame (index: ``adata.obs_names``, columns: the model's genes), or the array.
        """
        seed, return_numpy = check_seed(seed), check_bool("return_numpy", return_numpy)
        n_samples = check_int("n_samples", n_samples)
        library_size = check_number("library_size", library_size, low=0.0, strict=True)
        x, codes = self.read(adata)
        decode_codes = self._decode_codes(adata, transform_batch)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        expr, device = np.empty(x.shape, dtype=np.float32), self.device  # filled batch by batch, no second copy
        for start, batch, mean, logvar in self.encoded(x, codes, batch_size):
            db = torch.from_numpy(decode_codes[start : start + batch_size]).to(device)
            acc = torch.zeros(batch.x.shape, device=device)
            for _ in range(n_samples):
                z = mean
                if n_samples > 1:
                    eps = torch.randn(mean.shape, generator=gen, device=device, dtype=mean.dtype)
                    z = reparameterize(mean, logvar, eps)
                acc += self.decoded(z, db).expression(library_size)
            expr[start : start + len(acc)] = (acc / n_samples).cpu().numpy()
        refuse_nonfinite(expr, "normalized expression")
        if return_numpy:
            return expr
        return pd.DataFrame(expr, index=adata.obs_names.copy(), columns=pd.Index(self.genes))

    @torch.no_grad()
    def sample(
        self,
        adata: AnnData,
        *,
        n_samples: int = 1,
        transform_batch: str | dict[str, str] | None = None,
        batch_size: int = 1024,
        seed: int = 0,
    ) -> np.ndarray:
        """Posterior predictive samples: z ~ q(z | x), then x' ~ p(x | z) with each cell's own library size.

        Parameters
        ----------
        adata
            Cells, as for :meth:`get_latent`.
        n_samples
            Draws per cell.
        transform_batch
            Decode with other labels, as in :meth:`get_normalized_expression`.
        batch_size
            Cells per forward pass; seeded draws depend on it (the same seed and batch_size give the same result).
        seed
            Seeds the draws of z and of x'.

        Returns
        -------
        float32 array, cells × genes (``n_samples=1``) or ``n_samples`` × cells × genes."""
        seed, n_samples = check_seed(seed), check_int("n_samples", n_samples)
        x, codes = self.read(adata)
        decode_codes = self._decode_codes(adata, transform_batch)
        device, gen = self.device, torch.Generator(device=self.device).manual_seed(seed)
        draws = np.zeros((n_samples, x.shape[0], x.shape[1]), dtype=np.float32)
        for start, batch, mean, logvar in self.encoded(x, codes, batch_size):
            db = torch.from_numpy(decode_codes[start : start + batch_size]).to(device)
            for s in range(n_samples):
                eps = torch.randn(mean.shape, generator=gen, device=device, dtype=mean.dtype)
                px = self.decoded(reparameterize(mean, logvar, eps), db, self.module.library(batch.x))
                draws[s, start : start + len(batch.x)] = px.sample(gen).cpu().numpy()
        return draws[0] if n_samples == 1 else draws

    # -- persistence -----------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the model to folder ``path``: weights (``model.pt``, tensors only) and ``scvae.json`` (version,
        data spec, module config, training settings and record, history); read it back with
        :func:`scvae.model.load`.

        Parameters
        ----------
        path
            A folder, created if needed.
        overwrite
            Replace a model already in a non-empty ``path`` (otherwise: ``FileExistsError``)."""
        if (path := Path(path)).exists() and not path.is_dir():
            raise FileExistsError(f"{path} is a file; a model is saved as a folder: give a folder's path")
        if not check_bool("overwrite", overwrite) and path.exists() and any(path.iterdir()):
            raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace the model there")
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        torch.save(state, path / WEIGHTS_FILE)
        doc = {
            "format_version": FORMAT_VERSION,
            "scvae_version": __version__,
            "data": asdict(self.spec),
            "module": asdict(self.module.config),
            "training": None if self.settings is None else asdict(self.settings),
            "record": asdict(self.record),
            "history": self.history.to_dict(orient="list"),
        }
        (path / CONFIG_FILE).write_text(json.dumps(doc, indent=1))

    def summary(self) -> dict[str, Any]:
        """Every setting of the model and its training in one flat dict (what a fit records in ``adata.uns``, see
        :func:`uns_key`)."""
        shape = ("genes", "categories", "n_genes", "n_categories", "batch_index", "adversarial_indices")
        out: dict[str, Any] = {}
        for part in (self.spec, self.module.config, self.settings, self.record):
            if part is not None:
                out.update({k: v for k, v in asdict(part).items() if k not in shape})
        return out


def refuse_nonfinite(values: np.ndarray | torch.Tensor, what: str) -> None:
    """Raise instead of handing out NaN/inf computed by a model whose weights are not usable."""
    finite = bool(torch.isfinite(values).all()) if isinstance(values, torch.Tensor) else np.isfinite(values).all()
    if not finite:
        raise FloatingPointError(
            f"the model produced NaN/inf in the {what}; its weights are not usable (training diverged?). "
            "Retrain with a lower lr, and check that the data are what the likelihood expects"
        )


def module_config(spec: DataSpec, **arch: Any) -> ModuleConfig:
    """The :class:`ModuleConfig` of a model that reads ``spec``: its shape (genes, labels, which label is the batch,
    which ones the adversaries take out of z) from ``spec``, the architecture from ``arch``."""
    removed = [spec.index(k) for k in (spec.batch_key, spec.condition_key)]
    return ModuleConfig(
        n_genes=len(spec.genes),
        n_categories=[len(v) for v in spec.categories.values()],
        batch_index=spec.index(spec.batch_key),
        adversarial_indices=[i for i in removed if i is not None],
        **arch,
    )


def uns_record(model: SCVAE, key_added: str) -> dict[str, Any]:
    """The run's settings in a form AnnData can write to .h5ad (no None, no gene or category lists)."""
    record: dict[str, Any] = {"version": __version__, "key_added": key_added}
    record.update({k: v for k, v in model.summary().items() if v is not None and v != []})
    record["n_genes"] = len(model.genes)
    for col in ("elbo_train", "elbo_validation"):
        if col in model.history and model.record.best_epoch > 0:
            record[col] = float(model.history[col].iloc[model.record.best_epoch - 1])
    return record


def _from_format1(config: dict[str, Any]) -> tuple[DataSpec, ModuleConfig, TrainSettings, TrainingRecord]:
    """The parts of a model saved in format 1, whose ``config`` held them all in one flat dict."""
    spec = DataSpec(**{f.name: config[f.name] for f in fields(DataSpec) if f.name in config})
    arch = {f.name: config[f.name] for f in fields(ModuleConfig) if f.name in config}
    settings = TrainSettings(**{f.name: config[f.name] for f in fields(TrainSettings) if f.name in config})
    record = TrainingRecord(**{f.name: config[f.name] for f in fields(TrainingRecord) if f.name in config})
    return spec, module_config(spec, **arch), settings, record


def load(path: str | Path, *, map_location: str = "cpu") -> SCVAE:
    """Load a model saved with :meth:`SCVAE.save` (this format, or format 1 of scvae 0.1.0). Only tensors are
    read (``weights_only``): no pickled objects are ever executed.

    Parameters
    ----------
    path
        The folder :meth:`SCVAE.save` wrote.
    map_location
        Device for the weights: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …"""
    path = Path(path)
    cfg_file, w_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not cfg_file.is_file() or not w_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved scvae model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        doc = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{cfg_file} is not valid JSON (truncated or edited?): {err}") from err
    version = doc.get("format_version") if isinstance(doc, dict) else None
    try:
        if version == 1:
            spec, config, settings, record = _from_format1(doc["config"])
        elif version == FORMAT_VERSION:
            spec, config = DataSpec(**doc["data"]), ModuleConfig(**doc["module"])
            settings = None if doc.get("training") is None else TrainSettings(**doc["training"])
            record = TrainingRecord(**doc.get("record", {}))
        else:
            raise InputError(
                f"{cfg_file} has format version {version}; this scvae ({__version__}) reads versions 1 and "
                f"{FORMAT_VERSION}. Load it with the scvae version that saved it, or retrain"
            )
    except (KeyError, TypeError) as err:
        raise InputError(f"{cfg_file} lacks or misspells a setting ({err}); was it edited by hand?") from err
    history, genes, shape = doc.get("history", {}), spec.genes, module_config(spec)  # the shape genes, labels give
    if (config.n_genes, config.n_categories) != (shape.n_genes, shape.n_categories) or len(set(genes)) < len(genes):
        raise InputError(f"{cfg_file}: its genes and labels do not fit its network; was it edited by hand?")
    if len({len(v) for v in history.values()}) > 1:
        raise InputError(f"{cfg_file}: its history's columns differ in length; was it edited by hand?")
    module = VAE(config)
    try:
        state = torch.load(w_file, map_location=map_location, weights_only=True)
        module.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - any failure here means the file is not ours or is damaged
        raise InputError(f"{w_file} (damaged?) could not be read onto map_location={map_location!r}: {err}") from err
    module.eval()
    return SCVAE(module, spec, settings, record, pd.DataFrame(history))


def write_latent(model: SCVAE, adata: AnnData, key_added: str) -> None:
    """The last step of training: ``adata.obsm[key_added]`` (posterior means) and its record,
    ``adata.uns[uns_key(key_added)]`` (``uns["scvae"]`` for the default key), written
    only once the latent space is known to be finite. A collection of files holds no results: nothing is computed
    or written for it."""
    if is_collection(adata):
        logger.info("a collection of files holds no results; get the latent space with model.get_latent(collection)")
        return
    latent = model.get_latent(adata)  # raises before anything is written if the weights are not usable
    adata.obsm[key_added] = latent
    adata.uns[uns_key(key_added)] = uns_record(model, key_added)
