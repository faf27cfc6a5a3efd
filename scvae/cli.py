"""The ``scvae`` command line: train, embed, predict and inspect from a shell.

Every command reads an .h5ad, never overwrites its input, refuses to overwrite an existing output without
``--force``, and on bad input prints one line (``scvae: error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EXAMPLES = {
    "fit": "scvae fit data/cellbench_counts_hvg3000.h5ad -o cellbench_scvae.h5ad --batch-key batch --model-dir cellbench_model",
    "embed": "scvae embed new_cells.h5ad --model-dir cellbench_model -o new_cells_scvae.h5ad",
    "predict-perturbation": (
        "scvae predict-perturbation data/kang_ifnb_counts.h5ad --model-dir kang_model -o cd14_predicted.h5ad "
        "--condition-key condition --control control --stimulated stimulated --cell-type-key cell_type "
        '--target "CD14 Mono"'
    ),
    "de": (
        "scvae de data/kang_ifnb_counts.h5ad --model-dir kang_model -o cd14_de.csv --groupby condition "
        '--group1 stimulated --group2 control --subset cell_type="CD14 Mono"'
    ),
    "info": "scvae info cellbench_model",
}


class CommandError(Exception):
    """A problem with the command's input that the user can fix; printed as one line."""


def _read(path: str):
    import anndata as ad

    p = Path(path)
    if not p.is_file():
        raise CommandError(f"input file {path} does not exist")
    if p.suffix != ".h5ad":
        raise CommandError(
            f"{path} is not an .h5ad file; convert it first (e.g. with scanpy.read_10x_h5 and write_h5ad)"
        )
    try:
        return ad.read_h5ad(p)
    except Exception as err:  # noqa: BLE001 - anything h5py/anndata raises means: not a readable .h5ad
        raise CommandError(f"{path} could not be read as an .h5ad file ({type(err).__name__}: {err})") from err


# An option the user leaves out is not passed on, so the library's own default applies (one place declares it).
LIBRARY: dict = {"default": argparse.SUPPRESS}


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The options among ``names`` that the user gave, as keyword arguments."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _check_output(inp: str, out: str, force: bool, suffix: str = ".h5ad") -> Path:
    o = Path(out)
    if o.resolve() == Path(inp).resolve():
        raise CommandError("the output file is the input file; choose another -o (the input is never overwritten)")
    if o.exists() and not force:
        raise CommandError(f"{out} exists; pass --force to overwrite it")
    if o.suffix != suffix:
        raise CommandError(f"output {out} must end in {suffix}")
    if not o.resolve().parent.is_dir():  # checked now, not after training
        raise CommandError(f"the folder of the output {out} does not exist; create it first (mkdir -p)")
    return o


def _model_dir_free(model_dir: str | None, force: bool) -> None:
    if model_dir and Path(model_dir).exists() and not Path(model_dir).is_dir():
        raise CommandError(f"--model-dir {model_dir} is a file; a model is saved as a folder: give a folder's path")
    if model_dir and Path(model_dir).exists() and any(Path(model_dir).iterdir()) and not force:
        raise CommandError(f"model folder {model_dir} exists and is not empty; pass --force to replace it")


def _read_cells(inputs: list[str], output: str, force: bool):
    """One .h5ad read into memory (written back with the results), or several files / a zarr store opened from disk
    as a collection; the output path checked against every input."""
    out = None
    for inp in inputs:
        out = _check_output(inp, output, force)
    if len(inputs) == 1 and not (Path(inputs[0]).suffix == ".zarr" or Path(inputs[0]).is_dir()):
        return _read(inputs[0]), out
    from .stores import open_files

    missing = [p for p in inputs if not Path(p).exists()]
    if missing:
        raise CommandError(f"input {missing[0]} does not exist")
    return open_files(inputs), out


def _write_cells(cells, out: Path, latent, key_added: str, record: dict) -> None:
    """Write ``cells`` with their latent space: the AnnData itself, or for a collection its obs and genes (the
    counts stay in the input files)."""
    import anndata as ad
    import pandas as pd

    from .data import uns_key
    from .stores import is_collection

    if is_collection(cells):
        obs = cells.obs.copy()
        obs.index = pd.Index(cells.obs_names).astype(str)
        cells = ad.AnnData(obs=obs, var=pd.DataFrame(index=pd.Index(cells.var_names).astype(str)))
    cells.obsm[key_added] = latent
    cells.uns[uns_key(key_added)] = record
    cells.write_h5ad(out)


def cmd_fit(args: argparse.Namespace) -> None:
    from . import model as m
    from .stores import is_collection
    from .trained import LATENT_KEY, uns_record

    _model_dir_free(args.model_dir, args.force)
    adata, out = _read_cells(args.input, args.output, args.force)
    key = getattr(args, "key_added", LATENT_KEY)
    model = m.fit(
        adata,
        layer=args.layer,
        batch_key=args.batch_key,
        condition_key=args.condition_key,
        progress_bar=args.progress,
        key_added=key,
        **_given(args, "likelihood", "n_latent", "max_epochs", "seed", "accelerator"),
    )
    latent = model.get_latent(adata) if is_collection(adata) else adata.obsm[key]
    _write_cells(adata, out, latent, key, uns_record(model, key))
    if args.model_dir:
        model.save(args.model_dir, overwrite=args.force)
    logging.getLogger("scvae").info("wrote %s%s", out, f" and model {args.model_dir}" if args.model_dir else "")


def cmd_embed(args: argparse.Namespace) -> None:
    from .data import check_key_added
    from .trained import LATENT_KEY, uns_record

    model = _load(args.model_dir)
    adata, out = _read_cells(args.input, args.output, args.force)
    key = check_key_added(getattr(args, "key_added", LATENT_KEY), adata)
    _write_cells(adata, out, model.get_latent(adata), key, uns_record(model, key))


def cmd_predict(args: argparse.Namespace) -> None:
    out = _check_output(args.input, args.output, args.force)
    model = _load(args.model_dir)
    adata = _read(args.input)
    pred = model.predict_perturbation(
        adata,
        condition_key=args.condition_key,
        control=args.control,
        stimulated=args.stimulated,
        cell_type_key=args.cell_type_key,
        target=args.target,
        correct_bias=not args.no_bias_correction,
        **_given(args, "method", "cells", "similar", "n_cells", "interval", "seed"),
    )
    pred.write_h5ad(out)


def cmd_de(args: argparse.Namespace) -> None:
    out = _check_output(args.input, args.output, args.force, suffix=".csv")
    model = _load(args.model_dir)
    adata = _read(args.input)
    if args.subset:
        key, sep, value = args.subset.partition("=")
        if not sep:
            raise CommandError(f"--subset must look like KEY=VALUE, got {args.subset!r}")
        if key not in adata.obs:
            raise CommandError(f"--subset: {key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})")
        from .data import label_text

        keep = (label_text(adata.obs[key]) == value).to_numpy()
        if not keep.any():
            raise CommandError(f"--subset: no cells have {key} = {value!r}")
        adata = adata[keep].copy()
    df = model.differential_expression(
        adata,
        groupby=args.groupby,
        group1=args.group1,
        group2=args.group2,
        batch_correction=args.batch_correction,
        **_given(args, "mode", "delta", "n_samples", "fdr", "seed"),
    )
    df.to_csv(out)
    logging.getLogger("scvae").info("wrote %s: %d genes, %d called DE", out, len(df), int(df["is_de"].sum()))


def cmd_info(args: argparse.Namespace) -> None:
    model = _load(args.model_dir)
    spec, best = model.spec, model.record.best_epoch
    lines = [
        repr(model),
        f"genes: {len(spec.genes)} (first: {', '.join(spec.genes[:5])})",
        f"layer: {spec.layer or 'X'}",
    ]
    for key, cats in spec.categories.items():
        lines.append(f"label {key}: {len(cats)} categories: {', '.join(cats[:10])}{' ...' if len(cats) > 10 else ''}")
    lines.append("settings: " + json.dumps(model.summary()))
    if not model.history.empty and best > 0:
        last = model.history.iloc[best - 1]
        elbo = last.get("elbo_validation", last.get("elbo_train"))
        settings = model.settings
        if settings and settings.weight_averaging and not settings.early_stopping:
            kept = f"averaged over the last {settings.weight_averaging:g} of the epochs; last epoch {best}"
        else:
            kept = f"epoch {best}, {'best validation ELBO' if settings and settings.early_stopping else 'final'}"
        lines.append(f"weights kept: {kept} (ELBO per cell {elbo:.2f})")
    sys.stdout.write("\n".join(lines) + "\n")


def _load(model_dir: str):
    from . import model as m

    if not Path(model_dir).is_dir():
        what = "is a file, not a model's folder" if Path(model_dir).exists() else "does not exist"
        raise CommandError(f"model folder {model_dir} {what} (give the folder that 'scvae fit --model-dir' wrote)")
    return m.load(model_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scvae",
        description="Variational autoencoders for single-cell counts, on .h5ad files.",
        epilog="Run 'scvae COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        if name in ("fit", "embed"):
            p.add_argument(
                "input",
                nargs="+",
                help="input .h5ad (raw counts in X, or in --layer); or several .h5ad files or zarr stores, read as one "
                "collection from disk (the genes all share; obs['file'] names each cell's file, e.g. --batch-key "
                "file); OUTPUT then holds obs and the latent space, not the counts",
            )
        elif name != "info":
            p.add_argument("input", help="input .h5ad (counts where the model reads them: X, or fit's --layer)")
        if name != "info":
            p.add_argument("-o", "--output", required=True, help=f"output {'.csv' if name == 'de' else '.h5ad'}")
            p.add_argument(
                "--model-dir",
                required=name != "fit",
                help="also save the trained model in this folder" if name == "fit" else "a saved model's folder",
            )
            p.add_argument(
                "--force", action="store_true", help="overwrite OUTPUT (and fit's --model-dir) if they exist"
            )
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings and errors only")
        return p

    f = add("fit", "train a model; write the input plus obsm['X_scvae'] and uns['scvae'] to OUTPUT", cmd_fit)
    f.add_argument("--layer", help="read counts from adata.layers[LAYER] instead of X")
    f.add_argument("--batch-key", help="obs column of batches to correct for")
    f.add_argument("--condition-key", help="obs column of conditions (e.g. control/stimulated)")
    f.add_argument("--likelihood", **LIBRARY, help="nb, zinb, poisson, gaussian or bernoulli (default: fit's)")
    f.add_argument("--n-latent", type=int, **LIBRARY, help="latent dimensions (default: fit's)")
    f.add_argument("--max-epochs", type=int, **LIBRARY, help="default: scaled to the number of cells")
    f.add_argument("--seed", type=int, **LIBRARY)
    f.add_argument("--accelerator", **LIBRARY, help="auto (a GPU if there is one), cpu or gpu (default: fit's)")
    f.add_argument("--key-added", **LIBRARY, help="obsm key of the latent (default: fit's)")

    e = add("embed", "embed new cells with a saved model; write them with obsm['X_scvae'] and uns['scvae']", cmd_embed)
    e.add_argument("--key-added", **LIBRARY, help="obsm key of the latent (default: fit's)")

    p = add("predict-perturbation", "predict a cell type's response to a stimulus; write predicted cells", cmd_predict)
    for opt in ("--condition-key", "--control", "--stimulated", "--cell-type-key", "--target"):
        p.add_argument(opt, required=True)
    p.add_argument("--method", **LIBRARY, help="delta, counterfactual or transport (default: predict_perturbation's)")
    p.add_argument(
        "--no-bias-correction",
        action="store_true",
        help="keep the decoder's error on the target's control cells in layers['expression'] and var['change']",
    )
    p.add_argument(
        "--cells",
        **LIBRARY,
        help="observed (the target's control cells, changed count by count as the model changes them) or decoded "
        "(the model's draws) in X and layers['expression'] (default: predict_perturbation's)",
    )
    p.add_argument(
        "--similar",
        type=float,
        **LIBRARY,
        help="weight from 0 to 1 of the change seen in the most alike cell types (default: predict_perturbation's)",
    )
    p.add_argument(
        "--n-cells", type=int, **LIBRARY, help="predicted cells (default: one per control cell, at least 1,000)"
    )
    p.add_argument(
        "--interval",
        type=float,
        **LIBRARY,
        help="level, e.g. 0.9: also write an interval for each gene's predicted mean change, var['change_lower'] "
        "and var['change_upper'], calibrated on the other cell types (needs 3 or more with cells in both conditions)",
    )
    p.add_argument("--seed", type=int, **LIBRARY)

    d = add("de", "differential expression between two groups of cells; write one row per gene to a .csv", cmd_de)
    d.add_argument("--groupby", required=True, help="obs column that defines the groups")
    d.add_argument("--group1", required=True, help="category of --groupby (group 1)")
    d.add_argument("--group2", help="category of --groupby to compare with (default: all other cells)")
    d.add_argument("--subset", help="only cells with KEY=VALUE in obs, e.g. cell_type=B")
    d.add_argument("--mode", **LIBRARY, help="change or vanilla (default: differential_expression's)")
    d.add_argument("--delta", type=float, **LIBRARY, help="smallest |log2 fold change| that counts as a change")
    d.add_argument("--batch-correction", action="store_true", help="average expression over the model's batches")
    d.add_argument("--n-samples", type=int, **LIBRARY)
    d.add_argument("--fdr", type=float, **LIBRARY)
    d.add_argument("--seed", type=int, **LIBRARY)

    i = add("info", "print what a saved model was trained on", cmd_info)
    i.add_argument("model_dir", help="folder written by 'scvae fit --model-dir' or model.save")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .version import __version__

        sys.stdout.write(f"scvae {__version__}\n")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="scvae: %(message)s", stream=sys.stderr
    )
    args.progress = not args.quiet and sys.stderr.isatty()
    from .data import InputError
    from .settings import TrainingDiverged

    try:
        args.func(args)
    except (CommandError, InputError, FileNotFoundError, FileExistsError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        sys.stderr.write(f"scvae: error: {msg}\n")
        return 2
    except (TrainingDiverged, FloatingPointError) as err:  # the run failed on these data: one line, as bad input
        sys.stderr.write(f"scvae: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("scvae: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
