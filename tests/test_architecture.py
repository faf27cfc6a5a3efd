"""The direction of every import inside ``scvae/``: data → distributions/nn → module → train → model → features
→ tl/pl/cli, read from the source (imports inside functions and ``TYPE_CHECKING`` blocks included)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scvae"
# A module may import modules of its own layer or lower ones, never a higher one.
LAYERS = {
    "version": 0,
    "data": 1,
    "conditions": 6,
    "baselines": 6,
    "loaders": 1,
    "stacked": 1,
    "stores": 1,
    "distributions": 2,
    "kernels": 2,
    "likelihoods": 2,
    "nn": 2,
    "priors": 2,
    "module": 3,
    "settings": 4,
    "plan": 4,
    "callbacks": 4,
    "train": 4,
    "trained": 5,
    "model": 5,
    "de": 6,
    "mapping": 6,
    "objectives": 6,
    "latent": 6,
    "perturbation": 6,
    "metrics": 7,
    "datasets": 7,
    "scoring": 7,
    "tl": 7,
    "pl": 7,
    "cli": 7,
    "__init__": 8,
    "__main__": 8,  # python -m scvae: the command line
}
FEATURES = [name for name, layer in LAYERS.items() if layer == 6]


def imports() -> dict[str, set[str]]:
    """{module: the scvae modules it imports}."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        name, found = path.stem, set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:  # from . import x / from .x import y
                    if node.module:
                        found.add(node.module.split(".")[0])
                    else:
                        found.update(a.name for a in node.names)
                elif node.module and node.module.split(".")[0] == "scvae":
                    parts = node.module.split(".")
                    found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
            elif isinstance(node, ast.Import):
                for a in node.names:
                    parts = a.name.split(".")
                    if parts[0] == "scvae":
                        found.add(parts[1] if len(parts) > 1 else "__init__")
        graph[name] = found - {name}
    return graph


def test_every_module_has_a_layer():
    assert set(imports()) == set(LAYERS), "give each new module of scvae/ a layer in LAYERS"


def test_no_import_points_upwards():
    upward = [
        f"{mod} (layer {LAYERS[mod]}) imports {dep} (layer {LAYERS[dep]})"
        for mod, deps in imports().items()
        for dep in sorted(deps)
        if LAYERS[dep] > LAYERS[mod]
    ]
    assert not upward, upward


def test_no_import_cycle():
    graph = imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' → '.join([*path, node, dep])}")
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


# What a feature module may use of a trained model (scvae.trained.SCVAE): reading AnnData, minibatches, the
# encoder and decoder, where it lives, and what it was fitted on and with. ``module`` is the network itself.
CORE = {
    "read", "batches", "encoded", "decoded", "device", "genes", "likelihood", "labels", "spec", "module",
    "settings", "record", "history",
}  # fmt: skip


def model_attributes(tree: ast.AST) -> set[str]:
    """The attributes read on a name ``model``, ``mapped`` or ``reference`` (how features name a model)."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("model", "mapped", "reference")
    }


def test_features_use_only_the_public_core_of_the_model():
    scvae_class = next(
        n for n in ast.walk(ast.parse((PACKAGE / "trained.py").read_text())) if getattr(n, "name", "") == "SCVAE"
    )
    public = {n.name for n in scvae_class.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    public |= {  # attributes set on self
        n.attr
        for n in ast.walk(scvae_class)
        if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name)
        if n.value.id == "self" and not n.attr.startswith("_")
    }
    assert CORE <= public, sorted(CORE - public)
    for name in FEATURES:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        private = [
            f"{name} imports {a.name} from {node.module}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for a in node.names
            if a.name.startswith("_") and a.name != "__future__"
        ]
        private += [f"{name} uses model.{a}" for a in sorted(model_attributes(tree) - CORE)]
        assert not private, private


def test_the_checker_sees_upward_and_function_level_imports(tmp_path, monkeypatch):
    """The checks above fail on what they are meant to catch (a fake package with an upward import inside a
    function and a private import), and what a feature reads on a model."""
    fake = tmp_path / "scvae"
    fake.mkdir()
    (fake / "data.py").write_text("def f():\n    from .model import _build\n")
    (fake / "model.py").write_text("from . import data\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph = imports()
    assert graph == {"data": {"model"}, "model": {"data"}}
    import pytest

    with pytest.raises(AssertionError, match="data \\(layer 1\\) imports model"):
        test_no_import_points_upwards()
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle()
    assert model_attributes(ast.parse("model.read(a)\nmapped._state = model.module.config")) == {
        "read",
        "_state",
        "module",
    }


def test_only_the_registry_branches_on_a_likelihood_name():
    """What a likelihood does is its object's business (scvae/likelihoods.py): no other module compares the name
    with a literal."""
    names = "|".join(["nb", "zinb", "poisson", "gaussian", "bernoulli"])
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    found = [
        f"{path.name}:{i}: {line.strip()}"
        for path in sorted(PACKAGE.glob("*.py"))
        if path.name != "likelihoods.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found
    assert pattern.search('if likelihood == "zinb":') and pattern.search('kind in ("nb", "zinb")')


def test_no_module_is_longer_than_450_lines():
    """A module a reader takes in at one sitting (the bound is issue 17's)."""
    lengths = {path.name: len(path.read_text().splitlines()) for path in sorted(PACKAGE.glob("*.py"))}
    assert lengths and max(lengths.values()) <= 450, {k: v for k, v in lengths.items() if v > 450}
