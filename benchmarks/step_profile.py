"""Where one training step's time goes, scvae beside scvi-tools: the floor under the speed ratio.

    pip install -e ".[bench]" "torch==2.13.0"
    python benchmarks/step_profile.py [--cells 10000] [--rounds 7] [--batch-size 128]

On one synthetic dataset (cells × 2,000 genes, 4 batches; the data of ``speed_vs_scvi.py``) and the model of that
benchmark (NB, n_latent=10, n_hidden=128, one layer, the batch one-hot into encoder and decoder), times per
minibatch step, in milliseconds, each the median over ``--rounds`` rounds that run every part one after the other
(so that the machine's drift hits all parts alike):

- ``matmuls``: only the five large matrix products of a dense step with the shapes of this model (encoder input
  layer forward and weight gradient; decoder output layer forward, weight gradient and input gradient), on random
  data; ``decoder matmuls``: the three of the decoder's output layer, which no implementation of this model avoids;
- ``input layer``: scvae's encoder input layer (:class:`scvae.nn.InputLayer`), forward and weight gradient, on real
  minibatches given by their non-zero entries, as in training; the dense products it replaces are the other two of
  ``matmuls``;
- ``likelihood``: scvae's NB log-likelihood from the decoder's logits, forward and backward, on real minibatches
  (``scvae.distributions.log_nb_softmax_sum``);
- ``bare step``: scvae's loss, backward pass and fused Adam over an epoch of minibatches from its loader, in a
  plain loop; ``step in Lightning``: the same through ``scvae.train.train`` (one epoch, timed from the epoch's start
  to its end); the same two for scvi-tools (its ``VAE`` module with the same settings and its Adam, eps 0.01, in a
  plain loop over the same minibatches; and ``SCVI.train`` for one epoch), when it is installed.

Writes ``step_profile.csv`` and ``.md`` to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import markdown_table, synthetic_blocks

OUT = Path(__file__).resolve().parent / "results"


def timed(fn, repeats: int = 1) -> float:
    """Mean wall time of ``fn()`` in ms over ``repeats`` calls."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def bare_loop_ms(module: torch.nn.Module, loader, loss, **adam) -> float:
    """ms per step of ``loss(xb, cb, nonzero)`` (a scalar), its backward pass and Adam (lr 1e-3, eps 0.01, weight
    decay 1e-6; ``adam``: further options) over one epoch of ``loader``, in a plain loop."""
    opt = torch.optim.Adam(module.parameters(), lr=1e-3, eps=0.01, weight_decay=1e-6, **adam)
    steps = 0
    t0 = time.perf_counter()
    for xb, cb, nz in loader:
        value = loss(xb, cb, nz)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        steps += 1
    return (time.perf_counter() - t0) / steps * 1e3


def epoch_clock():
    """A Lightning callback that records the last epoch's wall time (``ms``) and its steps (``steps``)."""
    import lightning.pytorch as pl

    class EpochClock(pl.Callback):
        def on_train_epoch_start(self, trainer, plan) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, plan) -> None:
            self.ms = (time.perf_counter() - self.t0) * 1e3
            self.steps = trainer.num_training_batches

    return EpochClock()


def scvae_parts(x, codes, batch_size: int) -> dict:
    """Callables that time scvae's parts; each returns ms per step."""
    import lightning.pytorch as pl

    from scvae import kernels as K
    from scvae.loaders import Minibatch, make_loader
    from scvae.module import VAE, ModuleConfig
    from scvae.train import Runtime, TrainSettings, train

    n, g = x.shape
    n_cov = int(codes.max()) + 1
    gen = torch.Generator().manual_seed(0)
    big = {  # the five large products of one step, with this model's shapes
        "enc_in": torch.randn(batch_size, g + n_cov, generator=gen),
        "enc_w": torch.randn(128, g + n_cov, generator=gen),
        "h": torch.randn(batch_size, 128, generator=gen),
        "head_w": torch.randn(g, 128, generator=gen),
        "g_h": torch.randn(batch_size, 128, generator=gen),
        "g_out": torch.randn(batch_size, g, generator=gen),
    }

    def matmuls() -> float:
        def one() -> None:
            big["enc_in"] @ big["enc_w"].T  # encoder input layer, forward
            big["g_h"].T @ big["enc_in"]  # its weight gradient
            big["h"] @ big["head_w"].T  # decoder output layer, forward
            big["g_out"].T @ big["h"]  # its weight gradient
            big["g_out"] @ big["head_w"]  # its input gradient

        return timed(one, 100)

    def decoder_matmuls() -> float:
        def one() -> None:
            big["h"] @ big["head_w"].T
            big["g_out"].T @ big["h"]
            big["g_out"] @ big["head_w"]

        return timed(one, 100)

    loader = make_loader(x, codes, np.arange(n), batch_size, shuffle=True, seed=0)
    batches = [b for _, b in zip(range(50), loader)]
    probe = VAE(ModuleConfig(g, n_latent=10, n_hidden=128, n_layers=1, n_categories=(n_cov,)))
    layer = probe.encoder.body.linears[0]
    inputs = [(probe.encoder_input(xb, nz), probe.one_hot(cb)) for xb, cb, nz in batches]

    def input_layer() -> float:
        def one() -> None:
            for entries, cov in inputs:
                layer.zero_grad(set_to_none=True)
                layer(entries, cov).backward(big["g_h"][: entries.shape[0]])

        return timed(one) / len(inputs)

    logits = torch.randn(batch_size, g, generator=gen).requires_grad_()
    log_theta = torch.zeros(g, requires_grad=True)

    def likelihood() -> float:
        def one() -> None:
            for xb, _, nz in batches:
                lib = xb.sum(-1, keepdim=True)
                out = K.log_nb_softmax_sum(xb, logits[: len(xb)], lib, torch.exp(log_theta), nz)
                out.mean().backward()

        return timed(one) / len(batches)

    def module() -> VAE:
        torch.manual_seed(0)
        return VAE(ModuleConfig(g, n_latent=10, n_hidden=128, n_layers=1, n_categories=(n_cov,), dropout=0.1))

    def bare() -> float:
        vae = module()
        return bare_loop_ms(
            vae, loader, lambda xb, cb, nz: vae.loss(Minibatch(xb, cb, nz), kl_weight=0.5).loss, fused=True
        )

    def lightning() -> float:
        clock = epoch_clock()

        class ClockedTrainer(pl.Trainer):  # scvae.train builds its own trainer: give it the clock
            def __init__(self, *args, callbacks=None, **kwargs) -> None:
                super().__init__(*args, callbacks=[*(callbacks or []), clock], **kwargs)

        settings = TrainSettings(max_epochs=1, lr=1e-3, kl_warmup_steps=len(loader) * 2, early_stopping=False)
        runtime = Runtime(accelerator="cpu", devices=1, progress_bar=False)
        original, pl.Trainer = pl.Trainer, ClockedTrainer
        try:
            train(module(), loader, None, settings, runtime)
        finally:
            pl.Trainer = original
        return clock.ms / clock.steps

    return {
        "matmuls": matmuls,
        "decoder matmuls": decoder_matmuls,
        "input layer": input_layer,
        "likelihood": likelihood,
        "scvae bare step": bare,
        "scvae step in Lightning": lightning,
    }


def scvi_parts(adata, x, codes, batch_size: int) -> dict:
    """scvi-tools' bare step and its step in Lightning, on the same minibatches and model."""
    import scvi
    from scvi.module import VAE as ScviVAE

    from scvae.loaders import make_loader

    n, g = x.shape
    n_cov = int(codes.max()) + 1
    arch = dict(
        n_hidden=128,
        n_latent=10,
        n_layers=1,
        dropout_rate=0.1,
        dispersion="gene",
        gene_likelihood="nb",
        encode_covariates=True,
    )
    loader = make_loader(x, codes, np.arange(n), batch_size, shuffle=True, seed=0)

    def bare() -> float:
        torch.manual_seed(0)
        vae = ScviVAE(g, n_batch=n_cov, **arch)

        def loss(xb, cb, _):
            tensors = {"X": xb, "batch": cb, "labels": torch.zeros(len(xb), 1, dtype=torch.long)}
            return vae(tensors, loss_kwargs={"kl_weight": 0.5})[2].loss

        return bare_loop_ms(vae, loader, loss)

    scvi.settings.verbosity = logging.WARNING
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.WARNING)

    def lightning() -> float:
        scvi.settings.seed = 0
        data = adata.copy()
        scvi.model.SCVI.setup_anndata(data, batch_key="batch")
        model = scvi.model.SCVI(data, **arch)
        clock = epoch_clock()
        model.train(
            max_epochs=1,
            batch_size=batch_size,
            train_size=1.0,
            accelerator="cpu",
            devices=1,
            plan_kwargs={"n_steps_kl_warmup": 2 * len(loader), "n_epochs_kl_warmup": None},
            callbacks=[clock],
            enable_progress_bar=False,
        )
        return clock.ms / clock.steps

    return {"scvi bare step": bare, "scvi step in Lightning": lightning}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--no-scvi", action="store_true", help="leave scvi-tools out")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    import anndata as ad

    x, obs = next(synthetic_blocks(args.cells, 2000, 0, args.cells))
    codes = obs["batch"].cat.codes.to_numpy()[:, None].astype(np.int64)
    parts = scvae_parts(x, codes, args.batch_size)
    if not args.no_scvi:
        try:
            parts.update(scvi_parts(ad.AnnData(x, obs=obs), x, codes, args.batch_size))
        except ImportError:
            print("scvi-tools is not installed (pip install -e '.[bench]'): scvae only", file=sys.stderr)
    for fn in parts.values():  # warm-up round, not counted
        fn()
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, fn in parts.items():
            times[name].append(fn())
    rows = [
        {"part": name, "ms per step (median)": statistics.median(v), "min": min(v), "max": max(v)}
        for name, v in times.items()
    ]
    df = pd.DataFrame(rows)
    table = markdown_table(df, floatfmt=".2f")
    med = {r["part"]: r["ms per step (median)"] for r in rows}
    lines = []
    if "scvi bare step" in med:
        lines.append(f"- bare step, scvi / scvae: {med['scvi bare step'] / med['scvae bare step']:.2f}×")
        lines.append(
            f"- step in Lightning, scvi / scvae: {med['scvi step in Lightning'] / med['scvae step in Lightning']:.2f}×"
        )
    lines.append(
        f"- Lightning's own cost per scvae step: {med['scvae step in Lightning'] - med['scvae bare step']:.2f} ms"
    )
    lines.append(
        f"- the encoder input layer's two dense products: {med['matmuls'] - med['decoder matmuls']:.2f} ms; "
        f"scvae's input layer on the non-zero entries: {med['input layer']:.2f} ms"
    )
    lines.append(
        f"- scvae bare step beyond the decoder's three products, the input layer and the likelihood: "
        f"{med['scvae bare step'] - med['decoder matmuls'] - med['input layer'] - med['likelihood']:.2f} ms"
    )
    cmd = "python benchmarks/step_profile.py " + shlex.join(sys.argv[1:])
    text = (
        f"# One training step, part by part\n\n{args.cells} synthetic cells × 2,000 genes, batch size "
        f"{args.batch_size}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}; medians over "
        f"{args.rounds} rounds (every part once per round).\n\nCommand: `{cmd}`\n\n{table}\n\n"
        + "\n".join(lines)
        + "\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "step_profile.csv", index=False)
    (args.out / "step_profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
