"""The AnnData-facing API: ``fit`` trains a model and writes its latent space into ``adata.obsm``; the returned
:class:`SCVAE` embeds, decodes and samples new AnnData with the same genes, and saves to / loads from a folder.

Nothing is registered on ``adata``: everything the model needs to read new data (gene names, label columns and
their category orders, the layer) is kept in the model itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from . import distributions as D
from .data import (
    CategoryEncoder,
    InputError,
    align_genes,
    check_positive_int,
    get_matrix,
    refuse_view,
    split_indices,
    validate_matrix,
)
from .loaders import make_loaders, to_dense_float
from .module import VAE
from .train import (
    TrainSettings,
    cuda_devices,
    default_lr,
    default_max_epochs,
    home_device,
    read_checkpoint,
    train,
)
from .version import __version__

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "scvae.json"
FORMAT_VERSION = 1

# Module settings, saved with the model and used to rebuild it.
DEFAULT_ADVERSARIAL_WEIGHT = 3.0  # with batch_key or condition_key: benchmarks/results/integration_ablation.md

_ARCH_KEYS = (
    "n_latent",
    "n_hidden",
    "n_layers",
    "likelihood",
    "encode_covariates",
    "dispersion",
    "dropout",
    "norm",
    "prior",
    "n_pseudo_inputs",
    "objective",
    "n_importance",
    "adversarial_weight",
)


class SCVAE:
    """A trained (conditional) VAE and what it needs to read AnnData: genes, labels and their categories.

    Create one with :func:`scvae.model.fit` or :func:`scvae.model.load`."""

    def __init__(self, module: VAE, config: dict[str, Any], history: pd.DataFrame | None = None) -> None:
        self.module = module
        self.config = config
        self.history = history if history is not None else pd.DataFrame()
        self.encoder = CategoryEncoder(config["categories"])

    # -- description ---------------------------------------------------------------------------------------
    @property
    def genes(self) -> list[str]:
        return self.config["genes"]

    @property
    def likelihood(self) -> str:
        return self.config["likelihood"]

    def __repr__(self) -> str:
        c = self.config
        labels = ", ".join(f"{k} ({len(v)})" for k, v in c["categories"].items()) or "none"
        return (
            f"SCVAE: {c['likelihood']} likelihood, {len(c['genes'])} genes, latent {c['n_latent']}, "
            f"{c['n_layers']}×{c['n_hidden']} hidden; labels: {labels}; trained {c.get('epochs_trained', 0)} "
            "epochs"
        )

    # -- reading AnnData -------------------------------------------------------------------------------------
    def read(self, adata: AnnData, overrides: dict[str, str] | None = None) -> tuple[Any, np.ndarray]:
        """The model's genes of ``adata``, in the model's order and validated for its likelihood, and the label
        codes of every cell (``overrides``: {label: category} to encode every cell with)."""
        layer = self.config.get("layer")
        x = get_matrix(adata, layer)
        idx = align_genes(adata, self.genes)
        if idx is not None and adata.isbacked:
            raise InputError(
                "adata is backed (on disk) and its genes are not the model's, in the model's order; selecting genes "
                "would read the whole matrix. Load the model's genes into memory first: "
                "adata = adata[:, model.genes].to_memory()"
            )
        if idx is not None:
            x = x[:, idx]
        validate_matrix(
            x,
            self.likelihood,
            counts=self.module.counts,
            where="adata.X" if layer is None else f"adata.layers[{layer!r}]",
        )
        codes = self.encoder.encode(adata, overrides)
        return x, codes

    @property
    def device(self) -> torch.device:
        """Where the network's weights are."""
        return next(self.module.parameters()).device

    def batches(self, x: Any, codes: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive minibatches of ``read``'s matrix and codes, as tensors on the model's device."""
        device = self.device
        for start in range(0, x.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            xb = torch.from_numpy(to_dense_float(x, rows)).to(device)
            yield xb, torch.from_numpy(codes[rows]).to(device)

    def _transform_overrides(self, transform_batch: str | dict[str, str] | None) -> dict[str, str] | None:
        if transform_batch is None or isinstance(transform_batch, dict):
            return transform_batch
        batch_key = self.config.get("batch_key")
        if batch_key is None:
            raise InputError(
                "transform_batch given as a single category, but the model has no batch_key; pass a dict "
                f"{{key: category}} with a key of {self.encoder.keys or 'its labels (it has none)'}"
            )
        return {batch_key: transform_batch}

    # -- outputs ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def get_latent(
        self, adata: AnnData, *, give_mean: bool = True, batch_size: int = 1024, seed: int = 0
    ) -> np.ndarray:
        """Latent representation of every cell of ``adata`` (cells × n_latent).

        ``give_mean=True`` returns the posterior mean; otherwise one draw from q(z | x), seeded by ``seed``."""
        x, codes = self.read(adata)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        self.module.eval()
        # written into one array made up front: no pile of small per-batch arrays between the large temporaries
        z = np.empty((x.shape[0], self.module.n_latent), dtype=np.float32)
        for start, (xb, cb) in zip(range(0, x.shape[0], batch_size), self.batches(x, codes, batch_size)):
            mean, logvar = self.module.inference(xb, cb)
            if not give_mean:
                eps = torch.randn(mean.shape, generator=gen, device=mean.device, dtype=mean.dtype)
                mean = mean + torch.exp(0.5 * logvar) * eps
            z[start : start + len(mean)] = mean.cpu().numpy()
        _refuse_nonfinite(z, "latent representation")
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

        ``transform_batch`` decodes every cell as if it came from another batch or condition (counterfactual):
        a category of ``batch_key``, or a dict ``{obs key: category}`` for any label the model is conditioned on.
        The encoder still sees each cell's own labels.
        """
        n_samples = check_positive_int("n_samples", n_samples)
        x, codes = self.read(adata)
        decode_codes = self.encoder.encode(adata, self._transform_overrides(transform_batch))
        gen = torch.Generator(device=self.device).manual_seed(seed)
        self.module.eval()
        expr = np.empty(x.shape, dtype=np.float32)  # filled batch by batch: no second copy from concatenating
        device = self.device
        for start, (xb, cb) in zip(range(0, x.shape[0], batch_size), self.batches(x, codes, batch_size)):
            db = torch.from_numpy(decode_codes[start : start + batch_size]).to(device)
            mean, logvar = self.module.inference(xb, cb)
            acc = torch.zeros(xb.shape, device=device)
            for _ in range(n_samples):
                z = mean
                if n_samples > 1:
                    eps = torch.randn(mean.shape, generator=gen, device=device, dtype=mean.dtype)
                    z = mean + torch.exp(0.5 * logvar) * eps
                params = self.module.generative(z, db)
                if self.module.counts:
                    acc += params["rho"] * library_size
                else:
                    acc += D.mean(self.likelihood, params)
            expr[start : start + len(acc)] = (acc / n_samples).cpu().numpy()
        _refuse_nonfinite(expr, "normalized expression")
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

        Returns cells × genes (``n_samples=1``) or n_samples × cells × genes."""
        n_samples = check_positive_int("n_samples", n_samples)
        x, codes = self.read(adata)
        decode_codes = self.encoder.encode(adata, self._transform_overrides(transform_batch))
        device = self.device
        gen = torch.Generator(device=device).manual_seed(seed)
        self.module.eval()
        draws = np.zeros((n_samples, x.shape[0], x.shape[1]), dtype=np.float32)
        for start, (xb, cb) in zip(range(0, x.shape[0], batch_size), self.batches(x, codes, batch_size)):
            db = torch.from_numpy(decode_codes[start : start + batch_size]).to(device)
            mean, logvar = self.module.inference(xb, cb)
            for s in range(n_samples):
                eps = torch.randn(mean.shape, generator=gen, device=device, dtype=mean.dtype)
                params = self.module.generative(mean + torch.exp(0.5 * logvar) * eps, db, self.module.library(xb))
                draws[s, start : start + xb.shape[0]] = D.sample(self.likelihood, params, gen).cpu().numpy()
        return draws[0] if n_samples == 1 else draws

    # -- persistence -----------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the model to folder ``path``: weights (``model.pt``, tensors only) and ``scvae.json`` (version,
        settings, genes, category orders, training history)."""
        path = Path(path)
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace the model there")
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        torch.save(state, path / WEIGHTS_FILE)
        doc = {
            "format_version": FORMAT_VERSION,
            "scvae_version": __version__,
            "config": self.config,
            "history": self.history.to_dict(orient="list"),
        }
        (path / CONFIG_FILE).write_text(json.dumps(doc, indent=1))


def _refuse_nonfinite(values: np.ndarray, what: str) -> None:
    if not np.isfinite(values).all():
        raise FloatingPointError(
            f"the model produced NaN/inf in the {what}; its weights are not usable (training diverged?). "
            "Retrain with a lower lr, and check that the data are what the likelihood expects"
        )


def build_module(config: dict[str, Any]) -> VAE:
    keys = list(config["categories"])
    batch_key = config.get("batch_key")
    removed = [config.get("batch_key"), config.get("condition_key")]  # what the adversaries take out of z
    return VAE(
        len(config["genes"]),
        n_categories=[len(v) for v in config["categories"].values()],
        batch_index=keys.index(batch_key) if batch_key in keys else None,
        adversarial_indices=[keys.index(k) for k in removed if k in keys],
        **{k: config[k] for k in _ARCH_KEYS if k in config},  # models saved before a key existed: its default
    )


def load(path: str | Path, *, map_location: str = "cpu") -> SCVAE:
    """Load a model saved with :meth:`SCVAE.save`. Only tensors are read (``weights_only``): no pickled
    objects are ever executed."""
    path = Path(path)
    cfg_file, w_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not cfg_file.is_file() or not w_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved scvae model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        doc = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{cfg_file} is not valid JSON (truncated or edited?): {err}") from err
    if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{cfg_file} has format version {doc.get('format_version') if isinstance(doc, dict) else None}; "
            f"this scvae ({__version__}) reads version {FORMAT_VERSION}. Load it with the scvae version that "
            "saved it, or retrain"
        )
    config = doc["config"]
    module = build_module(config)
    try:
        state = torch.load(w_file, map_location=map_location, weights_only=True)
        module.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - any failure here means the file is not ours or is damaged
        raise InputError(f"{w_file} could not be read as this model's weights (truncated or tampered?): {err}") from err
    module.eval()
    return SCVAE(module, config, pd.DataFrame(doc.get("history", {})))


def fit(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    condition_key: str | None = None,
    covariate_keys: Sequence[str] | None = None,
    likelihood: str = "nb",
    n_latent: int = 10,
    n_hidden: int = 128,
    n_layers: int = 1,
    dispersion: str = "gene",
    encode_covariates: bool = True,
    adversarial_weight: float | None = None,
    dropout: float = 0.1,
    norm: str = "batch",
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float | None = None,
    weight_decay: float = 1e-6,
    beta: float = 1.0,
    kl_warmup_epochs: int | None = None,
    kl_warmup_steps: int | None = None,
    objective: str = "elbo",
    n_importance: int = 1,
    prior: str = "normal",
    n_pseudo_inputs: int = 100,
    validation_size: float = 0.1,
    early_stopping: bool = False,
    patience: int = 20,
    seed: int = 0,
    key_added: str = "X_scvae",
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    progress_bar: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    data_on_device: bool | None = None,
) -> SCVAE:
    """Train a VAE (or a conditional VAE) on the counts in ``adata`` and write its latent space.

    Writes ``adata.obsm[key_added]`` (posterior mean of z, cells × ``n_latent``) and ``adata.uns["scvae"]``
    (the run's settings and final ELBO); changes nothing else in ``adata``.

    Parameters
    ----------
    adata
        Cells × genes. Raw counts (integers, any dtype, dense or sparse) for count likelihoods. Cells with no
        counts are refused (filter them with ``sc.pp.filter_cells(adata, min_counts=1)``); genes with no counts
        are kept and learned as (nearly) never expressed. A backed AnnData (``sc.read_h5ad(path, backed="r")``)
        is trained on from disk: ``X`` is read in blocks of contiguous cells (shuffled block by block), never
        whole, so data larger than memory can be used.
    layer
        Read the data from ``adata.layers[layer]`` instead of ``adata.X``.
    batch_key, condition_key, covariate_keys
        Categorical ``obs`` columns to condition on (cVAE): one-hot encoded and given to the decoder (and to
        the encoder unless ``encode_covariates=False``). ``batch_key`` is the one corrected for, and the one
        ``dispersion="gene-batch"`` and ``transform_batch`` refer to; ``condition_key`` is a perturbation or
        condition for counterfactual decoding.
    likelihood
        ``"nb"`` (negative binomial, default), ``"zinb"``, ``"poisson"``, ``"gaussian"`` (continuous, e.g.
        log-normalised data) or ``"bernoulli"`` (detection: x > 0).
    n_latent, n_hidden, n_layers
        Latent dimension and the width and depth of encoder and decoder.
    dispersion
        ``"gene"`` or ``"gene-batch"`` (NB/ZINB inverse dispersion per gene, or per gene and batch).
    encode_covariates, dropout, norm
        Give the labels to the encoder; dropout rate; ``"batch"``, ``"layer"`` or ``"none"`` normalisation.
    adversarial_weight
        Weight of adversarial label classifiers on the latent space (see :class:`scvae.module.VAE`): for
        ``batch_key`` and ``condition_key`` each, a small network learns to tell the label from z while the
        encoder learns to defeat it, so z keeps less of the batch and of the condition (which still reach the
        decoder). Default (None): 3 when either key is given, else 0 (none); 0 turns it off. Covariates are
        not touched. Batches mix further for the same cell-type separation
        (``benchmarks/results/integration.md``, ``integration_ablation.md``), and label swapping and latent
        arithmetic start from codes with less of the condition in them
        (``benchmarks/results/perturbation_kang.md``).
    max_epochs
        Default: about 3 million cell passes, between 20 and 200 epochs (200 for up to 15,000 cells).
    batch_size, lr, weight_decay
        Minibatch size and Adam's learning rate and weight decay. Default ``lr``: 4e-3 for the count likelihoods
        (``nb``, ``zinb``, ``poisson``), 1e-3 for ``gaussian`` and ``bernoulli`` (4e-3 was measured for counts;
        ``bernoulli`` kept the bundled PBMCs' cell types less well with it). For counts 4e-3
        (scvi-tools: 1e-3) takes the latent space as far in 200 epochs as 1e-3 does in 400: on Kang (condition as batch, 2,000
        genes, seed 0) batch mixing 0.917 at 4e-3 / 200 epochs against 0.913 at 1e-3 / 400 and 0.868 at
        1e-3 / 200, the same cell-type separation, in half the time
        (``benchmarks/results/integration_ablation.md``). Larger minibatches run more cells per second on large data
        (``benchmarks/results/speed_vs_scvi_batch256.md``); raise ``lr`` with them. If training diverges, lower
        ``lr``.
    beta, kl_warmup_epochs
        Weight of the KL term, reached linearly over ``kl_warmup_epochs`` (default: a quarter of
        ``max_epochs``, at most 50; 0 for none). ``kl_warmup_steps`` (minibatches), if given, replaces
        ``kl_warmup_epochs``. The weight of each epoch is the ``kl_weight`` column of ``model.history``.
    objective, n_importance
        ``"elbo"`` (default) or ``"iwae"``: the importance-weighted bound with ``n_importance`` = K samples
        per cell (for ``"elbo"``, K > 1 averages the ELBO over K samples). With IWAE, beta and the warm-up
        weight log p(z) - log q(z | x) inside every importance weight (see :mod:`scvae.module`).
    prior, n_pseudo_inputs
        ``"normal"`` (N(0, I)) or ``"vamp"``: a VampPrior, the mixture of the encoder's posteriors at
        ``n_pseudo_inputs`` learned pseudo-inputs, initialised from random training cells; its KL is estimated
        by Monte Carlo. Pseudo-inputs carry no labels (see :mod:`scvae.priors`).
    validation_size
        Fraction of cells held out (seeded) for the validation ELBO (in ``model.history``; early stopping
        watches it).
    early_stopping, patience
        ``False`` (default): train all ``max_epochs`` and return the final weights, as scvi-tools does. ``True``:
        stop when the validation ELBO has not improved for ``patience`` epochs after warm-up and return the
        weights of the best validation ELBO. The ELBO-best weights model held-out cells best, but on small data
        they come long before the latent space has finished separating biology from batch: on Kang (condition
        as batch, 2,000 genes) they mixed the two conditions less well than the final weights, for the same
        cell-type separation: mixing 0.793 against 0.913 after 400 epochs at lr 1e-3, seed 0
        (``benchmarks/results/integration_ablation.md``).
    seed
        Seeds weights, minibatch order, the validation split and sampling. The caller's random state
        (torch, numpy, random) is left untouched.
    key_added
        ``obsm`` key of the latent representation.
    accelerator, devices, strategy
        Passed to Lightning's ``Trainer``: ``"auto"`` uses a GPU if there is one; ``strategy="ddp"`` with
        ``devices=N`` trains on N devices (GPUs, or CPU processes with ``accelerator="cpu"``), each process on its
        own share of every epoch's minibatches. Each process takes ``batch_size`` cells per step, so a step sees
        N × ``batch_size`` cells and an epoch has 1/N of the steps: raise ``lr`` with N to train as far in as
        many epochs (the DDP test doubles lr 1e-3 for two processes; scaling up the default 4e-3 has not been
        measured). ``"ddp"`` runs the calling script again in each new process (run it as a
        script, not in a notebook); every process returns a model, and only rank 0 (``LOCAL_RANK`` 0) should
        write files.
    data_on_device
        Keep the count matrix on the GPU (sparse, copied there once) and cut minibatches there, with no copy
        from the host per step. ``None`` (default): when it takes less than half of the free GPU memory; else
        minibatches are cut on the host and copied one by one. Ignored on the CPU.
    progress_bar
        Show a progress bar over epochs.
    checkpoint_dir, resume
        Write a checkpoint to ``checkpoint_dir`` after every epoch; with ``resume=True``, continue the run saved
        there (same data and settings; ``max_epochs`` counts from the start of that run). Ctrl-C during training
        stops cleanly after the current minibatch and keeps the best weights so far, with or without checkpoints.

    Returns
    -------
    The trained :class:`SCVAE`; ``model.history`` holds per-epoch ELBO, reconstruction and KL (per cell).

    Examples
    --------
    >>> adata = scvae.datasets.cellbench()
    >>> model = scvae.model.fit(adata, batch_key="batch")
    >>> sc.pp.neighbors(adata, use_rep="X_scvae")
    """
    if not isinstance(adata, AnnData):
        raise InputError(f"expected an AnnData object, got {type(adata).__name__}; e.g. adata = sc.read_h5ad(path)")
    if likelihood not in D.LIKELIHOODS:
        raise InputError(f"likelihood must be one of {D.LIKELIHOODS}, got {likelihood!r}")
    for name, value in (("n_latent", n_latent), ("n_hidden", n_hidden), ("batch_size", batch_size)):
        check_positive_int(name, value)
    if isinstance(n_layers, bool) or not isinstance(n_layers, (int, np.integer)) or n_layers < 0:
        raise InputError(f"n_layers must be a non-negative integer, got {n_layers!r}")
    if max_epochs is not None:
        check_positive_int("max_epochs", max_epochs)
    if objective not in ("elbo", "iwae"):
        raise InputError(f"objective must be 'elbo' or 'iwae', got {objective!r}")
    if prior not in ("normal", "vamp"):
        raise InputError(f"prior must be 'normal' or 'vamp', got {prior!r}")
    check_positive_int("n_importance", n_importance)
    check_positive_int("n_pseudo_inputs", n_pseudo_inputs)
    if kl_warmup_steps is not None and (
        isinstance(kl_warmup_steps, bool) or not isinstance(kl_warmup_steps, (int, np.integer)) or kl_warmup_steps < 0
    ):
        raise InputError(f"kl_warmup_steps must be a non-negative integer, got {kl_warmup_steps!r}")
    if not 0 <= validation_size < 1:
        raise InputError(f"validation_size must be in [0, 1), got {validation_size!r}")
    if lr is None:
        lr = default_lr(likelihood)
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and lr > 0):
        raise InputError(f"lr must be a positive number, got {lr!r}")
    if data_on_device not in (None, True, False):
        raise InputError(
            f"data_on_device must be True, False or None (decide by free GPU memory), got {data_on_device!r}"
        )
    refuse_view(adata)
    if isinstance(covariate_keys, str):
        covariate_keys = [covariate_keys]
    keys = [k for k in (batch_key, condition_key, *(covariate_keys or [])) if k is not None]
    if len(set(keys)) != len(keys):
        raise InputError(f"batch_key, condition_key and covariate_keys must be different columns, got {keys}")
    if dispersion == "gene-batch" and batch_key is None:
        raise InputError("dispersion='gene-batch' needs batch_key")
    removable = batch_key is not None or condition_key is not None
    if adversarial_weight is None:
        adversarial_weight = DEFAULT_ADVERSARIAL_WEIGHT if removable else 0.0
    if isinstance(adversarial_weight, bool) or not (
        isinstance(adversarial_weight, (int, float)) and adversarial_weight >= 0
    ):
        raise InputError(f"adversarial_weight must be a number >= 0, got {adversarial_weight!r}")
    if adversarial_weight > 0 and not removable:
        raise InputError(
            "adversarial_weight > 0 needs batch_key or condition_key: its classifiers learn to tell those labels"
        )

    x = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    validate_matrix(x, likelihood, counts=likelihood in D.COUNT_LIKELIHOODS, where=where)
    if not pd.Index(adata.var_names).is_unique:
        raise InputError("adata.var_names are not unique; call adata.var_names_make_unique() first")
    encoder = CategoryEncoder.fit(adata, keys)
    codes = encoder.encode(adata)
    if condition_key is not None and len(encoder.categories[condition_key]) < 2:
        raise InputError(
            f"adata.obs[{condition_key!r}] has a single category ({encoder.categories[condition_key]}); a condition "
            "needs at least two (e.g. control and stimulated). Pass it as a covariate or drop condition_key"
        )
    if resume and checkpoint_dir is None:
        raise InputError("resume=True needs checkpoint_dir, the folder of the run to continue")
    if batch_size > adata.n_obs:
        raise InputError(f"batch_size={batch_size} is larger than the number of cells ({adata.n_obs}); lower it")

    n = adata.n_obs
    max_epochs = max_epochs or default_max_epochs(n)
    warmup_given = kl_warmup_epochs is not None
    if kl_warmup_epochs is None:
        kl_warmup_epochs = min(max_epochs // 4, 50)
    val_size = validation_size if n * validation_size >= 3 else 0.0
    train_idx, val_idx = split_indices(n, val_size, seed)
    if len(train_idx) < 3:
        raise InputError(f"adata has {n} cells; at least a handful are needed to train")
    batch_size = min(batch_size, len(train_idx))

    config: dict[str, Any] = {
        "genes": [str(g) for g in adata.var_names],
        "categories": encoder.categories,
        "layer": layer,
        "batch_key": batch_key,
        "condition_key": condition_key,
        "covariate_keys": list(covariate_keys or []),
        "n_latent": int(n_latent),
        "n_hidden": int(n_hidden),
        "n_layers": int(n_layers),
        "likelihood": likelihood,
        "encode_covariates": bool(encode_covariates),
        "adversarial_weight": float(adversarial_weight),
        "dispersion": dispersion,
        "dropout": float(dropout),
        "norm": norm,
        "max_epochs": int(max_epochs),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "beta": float(beta),
        "kl_warmup_epochs": int(kl_warmup_epochs),
        "kl_warmup_steps": None if kl_warmup_steps is None else int(kl_warmup_steps),
        "objective": objective,
        "n_importance": int(n_importance),
        "prior": prior,
        "n_pseudo_inputs": int(n_pseudo_inputs),
        "validation_size": float(val_size),
        "early_stopping": bool(early_stopping),
        "patience": int(patience),
        "seed": int(seed),
    }

    checkpoint = None
    if resume:
        checkpoint = read_checkpoint(checkpoint_dir)
        if not warmup_given:  # the default depends on max_epochs, which may differ when resuming
            config["kl_warmup_epochs"] = kl_warmup_epochs = checkpoint["config"]["kl_warmup_epochs"]
        _check_checkpoint_matches(checkpoint, config, checkpoint_dir)
    start_epoch = checkpoint["epoch"] if checkpoint else 0

    with torch.random.fork_rng(devices=cuda_devices(accelerator)):
        torch.manual_seed(seed + start_epoch)
        module = build_module(config)
        if prior == "vamp":  # pseudo-inputs start as random training cells (seeded)
            rows = np.random.default_rng(seed).choice(
                train_idx, n_pseudo_inputs, replace=len(train_idx) < n_pseudo_inputs
            )
            module.init_pseudo_inputs(torch.from_numpy(to_dense_float(x, rows)))
        if checkpoint:
            module.load_state_dict(checkpoint["module"])
        train_loader, val_loader = make_loaders(x, codes, train_idx, val_idx, batch_size, seed=seed + start_epoch)
        settings = TrainSettings(
            max_epochs=max_epochs,
            lr=lr,
            weight_decay=weight_decay,
            beta=beta,
            kl_warmup_steps=kl_warmup_steps or 0,
            kl_warmup_epochs=kl_warmup_epochs if kl_warmup_steps is None else None,
            early_stopping=early_stopping,
            patience=patience,
            data_on_device=data_on_device,
            progress_bar=progress_bar,
            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
            resume=checkpoint,
        )
        history, best = train(
            module,
            train_loader,
            val_loader,
            settings,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            config=config,
        )
    module.eval()
    module.to(home_device(accelerator))

    hist = pd.DataFrame(history)
    config["epochs_trained"] = len(hist)
    config["best_epoch"] = int(best.best_epoch)
    model = SCVAE(module, config, hist)
    latent = model.get_latent(adata)  # raises before anything is written if the weights are not usable

    adata.obsm[key_added] = latent
    adata.uns["scvae"] = uns_record(config, hist, key_added)
    logger.info(
        "trained %d epochs (weights of epoch %d kept); wrote adata.obsm[%r]", len(hist), best.best_epoch, key_added
    )
    return model


# Settings that may differ between a run and its resumption.
_RESUMABLE = ("max_epochs", "early_stopping", "patience")


def _check_checkpoint_matches(checkpoint: dict[str, Any], config: dict[str, Any], checkpoint_dir: Any) -> None:
    saved = checkpoint.get("config", {})
    differ = sorted(k for k in set(saved) | set(config) if k not in _RESUMABLE and saved.get(k) != config.get(k))
    if differ:
        raise InputError(
            f"the checkpoint in {checkpoint_dir} was made with other data or settings ({', '.join(differ)} differ); "
            "resume with the same adata and arguments, or start a new run in an empty checkpoint_dir"
        )


def uns_record(config: dict[str, Any], hist: pd.DataFrame, key_added: str) -> dict[str, Any]:
    """The run's settings in a form AnnData can write to .h5ad (no None, no nested category lists)."""
    record: dict[str, Any] = {"version": __version__, "key_added": key_added}
    for k, v in config.items():
        if k in ("genes", "categories") or v is None or v == []:
            continue
        record[k] = v
    record["n_genes"] = len(config["genes"])
    for col in ("elbo_train", "elbo_validation"):
        if col in hist:
            record[col] = float(hist[col].iloc[config["best_epoch"] - 1])
    return record
