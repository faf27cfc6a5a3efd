"""Speed and scale: scvae vs scvi-tools, side by side, on the same data with the same model.

    pip install -e ".[bench]" "torch==2.13.0"   # scvi-tools (benchmark only; never a dependency of scvae)
    python benchmarks/speed_vs_scvi.py [--sizes 10000 50000 200000] [--datasets pbmc68k kang cellbench]
                                       [--epochs 10] [--batch-size 128] [--threads N] [--tools scvae scvi]
                                       [--repeats R] [--scvae-batch-size B --scvae-lr LR] [--name NAME]

Both tools train the same model on the same cells, one after the other, each in a subprocess of its own (one per
tool and dataset, run sequentially), so that neither disturbs the other and each one's peak memory is its own.
With ``--repeats R`` every dataset is run R times, the tools alternating (scvae, scvi, scvae, ...): on a shared
machine whose speed drifts by 10-20 % from minute to minute, the medians and the range of the back-to-back ratios
say more than one pair of runs.

- NB likelihood, gene-wise dispersion, observed library size, n_latent=10, n_hidden=128, n_layers=1, dropout 0.1,
  batch norm; where the data have batches, the batch is one-hot and given to the encoder and the decoder (scvi:
  ``encode_covariates=True``; scvae's default). With one hidden layer, scvae's encoder (covariates into its
  first layer) and scvi's ``deeply_inject_covariates`` (into every layer) are the same network.
- scvae's adversarial batch classifier, on by default in ``fit`` when a ``batch_key`` is given, is off
  (``adversarial_weight=0``): scvi has none. ``--scvae-adversarial-weight 3`` measures what it costs. So is its
  weight averaging (``weight_averaging=0``): both tools return the final weights.
- Adam (lr 1e-3, eps 0.01, weight decay 1e-6: both tools' defaults), minibatches of ``--batch-size`` cells, a
  fixed number of epochs (no early stopping, no validation split for either), and the same linear KL warm-up over
  the same number of minibatch steps (``--kl-warmup-epochs`` × steps per epoch; scvi's default of 400 warm-up
  epochs is replaced by ``n_steps_kl_warmup``).
- The same training cells: 90 % of the cells (seeded); a training set whose size leaves a last minibatch of 1 or
  2 cells gives those cells to the held-out set, so both tools take the same number of steps per epoch.

Differences that remain (each tool's own implementation, part of what is measured): scvi's decoder has no
dropout (scvae's has the same 0.1 as the encoder); scvi's decoder also computes its zero-inflation head (a
``n_hidden × genes`` linear layer) for the NB likelihood, whose output is unused; scvi builds
``torch.distributions`` objects and logs torchmetrics every step; scvae keeps a copy of the weights with the best
training ELBO and returns those (``best_epoch`` column; with no early stopping it is normally the last epoch), and
``scvae.model.fit`` also writes the latent space of the training cells after training (in ``call_s``, not in the
epoch times). Their initialisations differ (scvi: dispersion log θ ~ N(0, 1); scvae: 0).

With ``--scvae-batch-size`` / ``--scvae-lr`` scvae alone trains with larger minibatches and a raised learning
rate (scvi keeps ``--batch-size`` and lr 1e-3; scvae's KL warm-up covers the same epochs in its own steps): the
issue's "larger effective batches with the learning rate adjusted", weighed at the same epochs by the same
held-out ELBO. ``--name`` names the output files (default ``speed_vs_scvi``).

Measured (per tool and dataset):

- ``s_per_epoch``: wall time of the training loop (from the first epoch's start to the end of training, timed by
  one Lightning callback given to both trainers; setup, data registration and the model build are excluded)
  divided by the epochs; ``s_per_epoch_after_first`` leaves out the first epoch; ``cells_per_s`` = training
  cells × epochs / loop time; ``s_per_epoch_per_10k`` = s_per_epoch per 10,000 training cells (constant when
  time grows linearly with cells; the md also gives the log-log slope over the synthetic sizes);
- ``call_s``: wall time of the public training call(s) (scvae: ``scvae.model.fit``; scvi: ``setup_anndata`` +
  ``SCVI(...)`` + ``train``);
- ``peak_rss_mb``: the subprocess's peak resident set (Linux: ``VmHWM``, not ``ru_maxrss``, which a child
  inherits from the parent it was forked from) at the end of training, and ``base_rss_mb``, the same just before the tool is imported (Python, torch, Lightning, AnnData and
  the data); ``peak_gpu_mb``: ``torch.cuda.max_memory_allocated`` on a GPU;
- ``heldout_elbo``: the ELBO per held-out cell (nats), computed by this script in the same way for both models
  from each one's encoder output (mean and variance of q(z | x)) and decoder output (NB mean, with the observed
  library size, and θ), models in evaluation mode: the NB log-likelihood written once here, averaged over
  ``--eval-samples`` draws of z (seeded), minus the closed-form KL to N(0, I); ``heldout_rec`` and
  ``heldout_kl`` are its terms and ``heldout_ll`` the importance-sampled log p(x) from the same draws (K =
  ``--eval-samples``, q as proposal). At most ``--eval-cells`` held-out cells (seeded) are evaluated.

Data: seeded synthetic NB counts (``--sizes``, cells × 2,000 genes: 10 cell types on a rank-10 structure, 4
batches with gene-wise batch effects and library-size shifts, log-normal library sizes around 500, gene-wise
dispersion; about 90 % zeros; CSR with integer values stored as float32 like the bundled files) and the bundled
real datasets (``--datasets``; restricted to their 2,000 most variable genes, Scanpy's ``seurat`` flavour on
log-normalised counts; cellbench with its batches, pbmc68k (765 genes: all kept) and kang without a batch).
Data files are written once to ``--data-dir`` and reused.

Prints markdown tables and writes ``<name>.csv`` (one row per tool and dataset) and ``.md`` to ``--out``
(default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from _common import machine, markdown_table, synthetic_blocks  # benchmarks/ is the script's folder, first on sys.path

OUT = Path(__file__).resolve().parent / "results"
N_GENES = 2000
HELDOUT = 0.1
ARCH = dict(n_latent=10, n_hidden=128, n_layers=1, dropout=0.1)
LR = 1e-3  # both tools' default learning rate (scvi trains with its own default; scvae's may be --scvae-lr)
REAL = {"pbmc68k": None, "kang": None, "cellbench": "batch"}  # dataset -> batch key


# -- data ----------------------------------------------------------------------------------------------------
def synthetic_counts(n_cells: int, n_genes: int = N_GENES, seed: int = 0, chunk: int = 10_000):
    """Seeded NB counts (see :func:`_common.synthetic_blocks`): CSR float32 with integer values, and obs."""
    import scipy.sparse as sp

    blocks, obs = [], []
    for x, o in synthetic_blocks(n_cells, n_genes, seed, chunk):
        blocks.append(x)
        obs.append(o)
    return sp.vstack(blocks, format="csr"), pd.concat(obs)


def real_dataset(name: str):
    """A bundled dataset restricted to its 2,000 most variable genes, cells with no counts left there dropped."""
    import scanpy as sc

    import scvae

    adata = getattr(scvae.datasets, name)()
    if adata.n_vars > N_GENES:
        norm = adata.copy()
        sc.pp.normalize_total(norm, target_sum=1e4)
        sc.pp.log1p(norm)
        sc.pp.highly_variable_genes(norm, n_top_genes=N_GENES, batch_key=REAL[name])
        adata = adata[:, norm.var["highly_variable"].to_numpy()].copy()
    keep = np.asarray(adata.X.sum(1)).ravel() > 0
    return adata[keep].copy() if not keep.all() else adata


def prepare(name: str, data_dir: Path, batch_size: int, eval_cells: int, seed: int) -> dict:
    """Write (once) the training and held-out files of a dataset; return their description."""
    import anndata as ad

    data_dir.mkdir(parents=True, exist_ok=True)
    key = f"{name}_seed{seed}_bs{batch_size}_eval{eval_cells}"
    train_path, held_path = data_dir / f"{key}_train.h5ad", data_dir / f"{key}_heldout.h5ad"
    meta_path = data_dir / f"{key}_meta.json"
    if train_path.is_file() and held_path.is_file() and meta_path.is_file():
        return json.loads(meta_path.read_text())
    full_path = data_dir / (f"{name}_seed{seed}.h5ad" if name.startswith("synthetic_") else f"{name}_{N_GENES}.h5ad")
    batch_key = "batch" if name.startswith("synthetic_") else REAL[name]
    if full_path.is_file():
        adata = ad.read_h5ad(full_path)
    else:
        if name.startswith("synthetic_"):
            x, obs = synthetic_counts(int(name.split("_")[1]), seed=seed)
            adata = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"gene{j}" for j in range(x.shape[1])]))
        else:
            adata = real_dataset(name)
        adata.obsm.clear()
        adata.uns.clear()
        adata.write_h5ad(full_path)
    n = adata.n_obs
    perm = np.random.default_rng(seed).permutation(n)
    n_held = int(round(n * HELDOUT))
    n_train = n - n_held
    if 0 < n_train % batch_size < 3:  # a last minibatch of 1-2 cells: give them to the held-out set
        n_train -= n_train % batch_size
    train_idx, held_idx = np.sort(perm[:n_train]), perm[n_train:]
    held_idx = np.sort(held_idx[:eval_cells])
    train, held = adata[train_idx].copy(), adata[held_idx].copy()
    train.write_h5ad(train_path)
    held.write_h5ad(held_path)
    meta = {
        "dataset": name,
        "train": str(train_path),
        "heldout": str(held_path),
        "batch_key": batch_key,
        "n_train": int(train.n_obs),
        "n_heldout": int(held.n_obs),
        "n_genes": int(adata.n_vars),
        "n_batches": int(adata.obs[batch_key].nunique()) if batch_key else 1,
        "zeros": round(1.0 - adata.X.nnz / (adata.n_obs * adata.n_vars), 3),
    }
    meta_path.write_text(json.dumps(meta))
    return meta


# -- measurements shared by both tools (run in the subprocess) ------------------------------------------------
def max_rss_mb() -> float:
    """Peak resident set of this process so far, MB. On Linux from ``VmHWM`` of /proc/self/status: unlike
    ``ru_maxrss``, which a new process inherits over exec from the process that forked it, it starts afresh."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


def make_clock():
    """A Lightning callback that records when each epoch starts and when training ends."""
    import lightning.pytorch as pl
    import torch

    def now() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    class EpochClock(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.end: float | None = None
            self.steps = 0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.starts.append(now())

        def on_train_end(self, trainer, pl_module) -> None:
            self.end = now()
            self.steps = int(trainer.global_step)

        def timings(self) -> dict:
            marks = [*self.starts, self.end]
            epochs = np.diff(marks)
            return {
                "epochs_run": len(self.starts),
                "steps_run": self.steps,
                "train_s": float(self.end - self.starts[0]),
                "first_epoch_s": float(epochs[0]),
                "s_per_epoch_after_first": float(epochs[1:].mean()) if len(epochs) > 1 else float("nan"),
            }

    return EpochClock()


def log_nb(x, mu, theta, eps: float = 1e-8):
    """NB log-pmf with mean ``mu`` and inverse dispersion ``theta`` (the one used for both tools)."""
    import torch

    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


def heldout_scores(encode, decode, x_all, codes_all, n_samples: int, seed: int, device, batch_size: int = 512):
    """Per-cell ELBO, its terms and the importance-sampled log p(x), the same way for any model.

    ``encode(x, codes) -> (mean, var)`` of q(z | x); ``decode(z, codes, library) -> (mu, theta)`` of the NB, with
    ``library`` the observed total counts (cells, 1)."""
    import scipy.sparse as sp
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    log2pi = math.log(2 * math.pi)
    rec, kl, ll = [], [], []
    with torch.no_grad():
        for start in range(0, x_all.shape[0], batch_size):
            block = x_all[start : start + batch_size]
            block = block.toarray() if sp.issparse(block) else np.asarray(block)
            x = torch.from_numpy(block.astype(np.float32)).to(device)
            codes = torch.from_numpy(codes_all[start : start + batch_size]).to(device)
            mean, var = encode(x, codes)
            b, s = x.shape[0], n_samples
            eps = torch.randn((s, *mean.shape), generator=gen, device=device, dtype=mean.dtype)
            z = mean + var.sqrt() * eps
            lib = x.sum(-1, keepdim=True)
            mu, theta = decode(z.reshape(s * b, -1), codes.repeat(s, 1), lib.repeat(s, 1))
            log_px = log_nb(x.repeat(s, 1), mu, theta).sum(-1).reshape(s, b).double()
            log_pz = (-0.5 * (z**2 + log2pi)).sum(-1).double()
            log_qz = (-0.5 * ((z - mean) ** 2 / var + var.log() + log2pi)).sum(-1).double()
            rec.append(log_px.mean(0).cpu())
            kl.append((0.5 * (var + mean**2 - 1.0 - var.log())).sum(-1).double().cpu())
            ll.append((torch.logsumexp(log_px + log_pz - log_qz, 0) - math.log(s)).cpu())
    rec_t, kl_t, ll_t = torch.cat(rec), torch.cat(kl), torch.cat(ll)
    return {
        "heldout_elbo": float((rec_t - kl_t).mean()),
        "heldout_rec": float(rec_t.mean()),
        "heldout_kl": float(kl_t.mean()),
        "heldout_ll": float(ll_t.mean()),
    }


def run_scvae(spec: dict, train, held, clock) -> dict:
    import lightning.pytorch as pl
    import torch

    import scvae
    from scvae.loaders import Minibatch

    class ClockedTrainer(pl.Trainer):  # gives scvae's trainer the same clock callback scvi gets
        def __init__(self, *args, callbacks=None, **kwargs) -> None:
            super().__init__(*args, callbacks=[*(callbacks or []), clock], **kwargs)

    pl.Trainer = ClockedTrainer  # this subprocess only; scvae.train looks up pl.Trainer when it trains
    t0 = time.perf_counter()
    model = scvae.model.fit(
        train,
        batch_key=spec["batch_key"],
        likelihood="nb",
        dispersion="gene",
        encode_covariates=True,
        norm="batch",
        max_epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        kl_warmup_steps=spec["kl_warmup_steps"],
        validation_size=0.0,
        early_stopping=False,
        seed=spec["seed"],
        lr=spec["lr"],
        accelerator=spec["accelerator"],
        devices=1,
        progress_bar=False,
        adversarial_weight=spec["adversarial_weight"],  # scvi has no classifier: 0 keeps the models the same
        weight_averaging=0.0,  # scvi returns the final weights; so does this comparison
        **ARCH,
    )
    call_s = time.perf_counter() - t0
    peak = max_rss_mb()
    module = model.module.eval()
    device = next(module.parameters()).device
    x, codes = model.read(held)

    def encode(xb, cb):
        mean, logvar = module.inference(Minibatch(xb, cb))
        return mean, logvar.exp()

    def decode(z, cb, lib):
        px = module.generative(z, cb, lib)
        return px.mu, px.theta

    scores = heldout_scores(encode, decode, x, codes, spec["eval_samples"], spec["seed"] + 1000, device)
    assert len(model.history) == spec["epochs"], "scvae stopped early"
    return {
        "call_s": call_s,
        "peak_rss_mb": peak,
        "best_epoch": model.record.best_epoch,
        "device": str(device),
        **scores,
        **_gpu_peak(torch),
    }


def run_scvi(spec: dict, train, held, clock) -> dict:
    import scvi
    import torch

    scvi.settings.verbosity = logging.WARNING
    scvi.settings.seed = spec["seed"]
    scvi.settings.logging_dir = spec["work_dir"]
    batch_key = spec["batch_key"]
    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(train, batch_key=batch_key)
    model = scvi.model.SCVI(
        train,
        n_latent=ARCH["n_latent"],
        n_hidden=ARCH["n_hidden"],
        n_layers=ARCH["n_layers"],
        dropout_rate=ARCH["dropout"],
        dispersion="gene",
        gene_likelihood="nb",
        encode_covariates=True,
        deeply_inject_covariates=True,
        use_batch_norm="both",
        use_layer_norm="none",
        use_observed_lib_size=True,
    )
    model.train(
        max_epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        train_size=1.0,
        early_stopping=False,
        accelerator=spec["accelerator"],
        devices=1,
        enable_progress_bar=False,
        plan_kwargs={"n_epochs_kl_warmup": None, "n_steps_kl_warmup": spec["kl_warmup_steps"]},
        callbacks=[clock],
    )
    call_s = time.perf_counter() - t0
    peak = max_rss_mb()
    module = model.module.eval()
    device = next(module.parameters()).device
    if batch_key:
        mapping = model.adata_manager.get_state_registry("batch").categorical_mapping
        codes = pd.Categorical(held.obs[batch_key].astype(str), categories=list(mapping)).codes
    else:
        codes = np.zeros(held.n_obs)
    codes = np.asarray(codes, dtype=np.int64)[:, None]
    assert (codes >= 0).all(), "held-out batch not seen in training"

    def encode(xb, cb):
        qz = module.inference(x=xb, batch_index=cb)["qz"]
        return qz.loc, qz.scale**2

    def decode(z, cb, lib):
        px = module.generative(z=z, library=lib.log(), batch_index=cb, y=None)["px"]
        return px.mu, px.theta

    scores = heldout_scores(encode, decode, held.X, codes, spec["eval_samples"], spec["seed"] + 1000, device)
    return {
        "call_s": call_s,
        "peak_rss_mb": peak,
        "best_epoch": spec["epochs"],
        "device": str(device),
        **scores,
        **_gpu_peak(torch),
    }


def _gpu_peak(torch) -> dict:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {"peak_gpu_mb": float("nan")}


def child(spec_path: str) -> None:
    """One tool on one dataset; writes a JSON result next to the spec."""
    spec = json.loads(Path(spec_path).read_text())
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "scvi", "scvae"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import anndata as ad
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    train, held = ad.read_h5ad(spec["train"]), ad.read_h5ad(spec["heldout"])
    clock = make_clock()
    base = max_rss_mb()
    runner = {"scvae": run_scvae, "scvi": run_scvi}[spec["tool"]]
    result = runner(spec, train, held, clock)
    result.update(clock.timings())
    result.update(base_rss_mb=base, torch_threads=torch.get_num_threads())
    Path(spec["result"]).write_text(json.dumps(result))


# -- driver ----------------------------------------------------------------------------------------------------
def run_one(tool: str, meta: dict, args, work_dir: Path, repeat: int = 0) -> dict:
    batch_size, lr = args.batch_size, LR
    if tool == "scvae":
        batch_size, lr = args.scvae_batch_size or args.batch_size, args.scvae_lr
    steps = math.ceil(meta["n_train"] / batch_size)
    warmup = args.kl_warmup_epochs if args.kl_warmup_epochs is not None else min(args.epochs // 4, 50)
    spec = {
        **meta,
        "tool": tool,
        "epochs": args.epochs,
        "batch_size": batch_size,
        "lr": lr,
        "adversarial_weight": args.scvae_adversarial_weight,
        "kl_warmup_steps": warmup * steps,
        "seed": args.seed,
        "threads": args.threads,
        "accelerator": args.accelerator,
        "eval_samples": args.eval_samples,
        "work_dir": str(work_dir),
        "result": str(work_dir / f"{meta['dataset']}_{tool}_{repeat}.json"),
    }
    spec_path = work_dir / f"{meta['dataset']}_{tool}_{repeat}_spec.json"
    spec_path.write_text(json.dumps(spec))
    Path(spec["result"]).unlink(missing_ok=True)
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    log_path = work_dir / f"{meta['dataset']}_{tool}_{repeat}.log"
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    row = {
        "dataset": meta["dataset"],
        "tool": tool,
        "repeat": repeat,
        "cells": meta["n_train"],
        "genes": meta["n_genes"],
        "batches": meta["n_batches"],
        "zeros": meta["zeros"],
        "epochs": args.epochs,
        "batch_size": batch_size,
        "lr": f"{lr:g}",
        "steps_per_epoch": steps,
        "kl_warmup_steps": warmup * steps,
        "heldout_cells": meta["n_heldout"],
    }
    if proc.returncode != 0 or not Path(spec["result"]).is_file():
        tail = log_path.read_text()[-2000:]
        logging.error("%s on %s failed (exit %s); log %s:\n%s", tool, meta["dataset"], proc.returncode, log_path, tail)
        row["error"] = f"exit {proc.returncode}; see {log_path}"
        return row
    res = json.loads(Path(spec["result"]).read_text())
    row.update(res)
    row["s_per_epoch"] = res["train_s"] / res["epochs_run"]
    row["cells_per_s"] = meta["n_train"] * res["epochs_run"] / res["train_s"]
    row["s_per_epoch_per_10k"] = row["s_per_epoch"] / (meta["n_train"] / 1e4)
    return row


COLUMNS = [
    "dataset",
    "tool",
    "repeat",
    "cells",
    "genes",
    "batches",
    "batch_size",
    "lr",
    "epochs",
    "s_per_epoch",
    "s_per_epoch_after_first",
    "s_per_epoch_per_10k",
    "cells_per_s",
    "call_s",
    "base_rss_mb",
    "peak_rss_mb",
    "peak_gpu_mb",
    "heldout_elbo",
    "heldout_rec",
    "heldout_kl",
    "heldout_ll",
    "steps_run",
    "best_epoch",
]


def side_by_side(df: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset: both tools' speed, memory and held-out ELBO (medians over the repeats), the speed
    ratio of the medians, and the range of the ratios of the repeats (each pair of runs back to back)."""
    rows = []
    for name, g in df.groupby("dataset", sort=False):
        t = g.groupby("tool").median(numeric_only=True)
        row = {"dataset": name, "cells": int(g["cells"].iloc[0]), "batches": int(g["batches"].iloc[0])}
        for col, label in (
            ("s_per_epoch", "s/epoch"),
            ("cells_per_s", "cells/s"),
            ("peak_rss_mb", "peak RSS MB"),
            ("heldout_elbo", "held-out ELBO"),
        ):
            for tool in ("scvae", "scvi"):
                row[f"{tool} {label}"] = float(t.at[tool, col]) if tool in t.index else float("nan")
        row["speed ratio scvae/scvi (cells/s)"] = row["scvae cells/s"] / row["scvi cells/s"]
        paired = g.pivot_table(index="repeat", columns="tool", values="cells_per_s")
        if {"scvae", "scvi"} <= set(paired.columns) and len(paired) > 1:
            ratios = (paired["scvae"] / paired["scvi"]).dropna()
            row["ratio range over repeats"] = f"{ratios.min():.2f}–{ratios.max():.2f} ({len(ratios)})"
        rows.append(row)
    return pd.DataFrame(rows)


def scaling_slopes(df: pd.DataFrame) -> str:
    """Log-log slope of s/epoch against training cells over the synthetic sizes (1 = linear)."""
    lines = []
    syn = df[df["dataset"].str.startswith("synthetic_") & df["s_per_epoch"].notna()] if "s_per_epoch" in df else df[:0]
    for tool, g in syn.groupby("tool", sort=False):
        if g["cells"].nunique() >= 2:
            med = g.groupby("cells")["s_per_epoch"].median()
            slope = np.polyfit(np.log(med.index.to_numpy(float)), np.log(med.to_numpy()), 1)[0]
            lines.append(f"- {tool}: s/epoch ∝ cells^{slope:.2f} over {g['cells'].min():,}–{g['cells'].max():,} cells")
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("scvae", "scvi-tools", "torch", "lightning"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[10_000, 50_000, 200_000],
        help="synthetic datasets: cells (× 2,000 genes); none: --sizes with no value",
    )
    parser.add_argument(
        "--datasets",
        nargs="*",
        default=list(REAL),
        choices=list(REAL),
        help="bundled real datasets (2,000 most variable genes)",
    )
    parser.add_argument("--epochs", type=int, default=10, help="fixed number of epochs for both tools")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--kl-warmup-epochs",
        type=int,
        default=None,
        help="KL warm-up for both, in epochs (as minibatch steps); default: scvae's, epochs // 4",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each subprocess (0: inherit)")
    parser.add_argument("--tools", nargs="+", default=["scvae", "scvi"], choices=["scvae", "scvi"])
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the tools this many times per dataset, alternating (the table gives medians)",
    )
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator for both (auto, cpu, gpu)")
    parser.add_argument("--eval-samples", type=int, default=10, help="draws of z per held-out cell")
    parser.add_argument("--eval-cells", type=int, default=5000, help="at most this many held-out cells evaluated")
    parser.add_argument("--seed", type=int, default=0, help="model seed, data split and synthetic data")
    parser.add_argument(
        "--scvae-batch-size",
        type=int,
        default=None,
        help="scvae's minibatch size, if not --batch-size (scvi keeps --batch-size)",
    )
    parser.add_argument("--scvae-lr", type=float, default=LR, help=f"scvae's learning rate (scvi: {LR:g})")
    parser.add_argument(
        "--scvae-adversarial-weight",
        type=float,
        default=0.0,
        help="scvae's adversarial batch classifier (fit's default with a batch_key is 3; 0, the default here, "
        "keeps the model the same as scvi's, which has none)",
    )
    parser.add_argument("--name", default="speed_vs_scvi", help="stem of the output files")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the .csv and .md")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "scvae_speed_vs_scvi",
        help="where the data files are written once and reused",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t_start = time.time()
    names = [f"synthetic_{n}" for n in args.sizes] + list(args.datasets)
    work_dir = args.data_dir / "runs"
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        meta = prepare(name, args.data_dir, args.batch_size, args.eval_cells, args.seed)
        logging.info(
            "%s: %d training cells × %d genes, %d batches, %.0f%% zeros",
            name,
            meta["n_train"],
            meta["n_genes"],
            meta["n_batches"],
            100 * meta["zeros"],
        )
        for repeat, tool in ((r, t) for r in range(args.repeats) for t in args.tools):
            row = run_one(tool, meta, args, work_dir, repeat)
            rows.append(row)
            if "s_per_epoch" in row:
                logging.info(
                    "  %s: %.2f s/epoch, %.0f cells/s, peak RSS %.0f MB, held-out ELBO %.1f",
                    tool,
                    row["s_per_epoch"],
                    row["cells_per_s"],
                    row["peak_rss_mb"],
                    row["heldout_elbo"],
                )
    df = pd.DataFrame(rows)
    df = df[[c for c in COLUMNS if c in df] + [c for c in df if c not in COLUMNS]]
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / f"{args.name}.csv", index=False)
    ok = df[df["s_per_epoch"].notna()] if "s_per_epoch" in df else df[:0]
    summary = markdown_table(side_by_side(ok), floatfmt=".2f") if len(ok) else "(no successful runs)"
    detail = markdown_table(ok[[c for c in COLUMNS if c in ok]], floatfmt=".2f") if len(ok) else ""
    slopes = scaling_slopes(ok)
    threads = args.threads
    if not threads and len(ok):
        threads = int(ok["torch_threads"].iloc[0])
    warm = args.kl_warmup_epochs if args.kl_warmup_epochs is not None else min(args.epochs // 4, 50)
    cmd = "python benchmarks/speed_vs_scvi.py " + shlex.join(sys.argv[1:])
    header = (
        "# Speed and scale: scvae vs scvi-tools\n\n"
        f"Same model for both (NB, gene dispersion, n_latent=10, n_hidden=128, n_layers=1, batch one-hot into "
        f"encoder and decoder), {args.epochs} epochs, batch size {args.batch_size}"
        + (
            f" (scvae: {args.scvae_batch_size or args.batch_size}, lr {args.scvae_lr:g}; scvi: lr {LR:g})"
            if args.scvae_batch_size or args.scvae_lr != LR
            else ""
        )
        + (
            f", scvae with its adversarial batch classifier (weight {args.scvae_adversarial_weight:g})"
            if args.scvae_adversarial_weight
            else ", no adversarial batch classifier"
        )
        + ", "
        + (f"linear KL warm-up over the first {warm} epoch(s) of minibatch steps" if warm else "no KL warm-up")
        + ", no validation, no early stopping; each tool and dataset in a subprocess of its own, one after "
        f"the other, {args.repeats} time(s) in alternation (the first table gives medians over the repeats). "
        "s/epoch: the training loop only (setup excluded). Held-out ELBO: nats per cell on up to "
        f"{args.eval_cells} held-out cells, {args.eval_samples} draws of z, computed by the script the same way "
        "for both. Peak RSS: the whole subprocess (Python, torch, the data and the tool).\n\n"
        f"Machine: {machine()}; {threads} torch thread(s). Versions: {versions()}. Wall time "
        f"{(time.time() - t_start) / 60:.1f} min.\n\nCommand: `{cmd}`\n\n"
    )
    errors = df[df["error"].notna()] if "error" in df else df[:0]
    text = header + summary + "\n"
    if slopes:
        text += "\nScaling with cells (synthetic data; exponent 1 = linear):\n\n" + slopes + "\n"
    text += "\n## Per run\n\n" + detail + "\n"
    if len(errors):
        text += "\nFailed runs: " + "; ".join(f"{r.tool} on {r.dataset} ({r.error})" for r in errors.itertuples())
        text += "\n"
    (args.out / f"{args.name}.md").write_text(text)
    print(summary)
    if slopes:
        print("\n" + slopes)
    print("\n" + detail)
    print(f"\nwrote {args.out / (args.name + '.csv')} and .md")


if __name__ == "__main__":
    main()
