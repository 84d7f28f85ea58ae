"""The layering contract, checked by reading every module's imports (``ast``; imports inside functions
included, and ``importlib.import_module("literal")``). Layers, lowest first:

1. ``data_prep``: no torch, ray, cclray, tune or export.
2. The runtime side of ``export`` (:data:`RUNTIME`): with everything it imports, transitively, only the
   standard library, numpy, nibabel, onnxruntime and tqdm: what ``pip install cclray[runtime]`` brings
   (an import guarded by ``except ImportError`` is optional); and no cclray, tune or export's torch side.
3. ``cclray``: reaches ``tune`` and the torch side of ``export`` only from its command layer
   (:data:`COMMAND_LAYER`); the runtime side of ``export`` is below it (evaluation shares its sliding window).
4. Ray: ``ray.train`` only in ``cclray/train.py``, ``ray.tune`` only in ``tune/``, ``ray`` at all only
   there, in ``cclray/commands/tune.py`` and in scale-out synthesis (``export/scaleout.py``: the runtime on
   Ray workers, which install ``cclray[runtime-ray]``: no torch).
5. Light front: ``cclray/cli.py`` and the command modules import nothing heavy at module level
   (``cclray --help`` is instant); ``cclray/config.py`` imports no torch at all.
"""
from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_prep", "cclray", "tune", "export")
RUNTIME = ("export", "export.runtime", "export.runtime_io", "export.card", "export.windows")
RUNTIME_EXTERNALS = {"numpy", "nibabel", "onnxruntime", "tqdm"}
COMMAND_LAYER = ("cclray.cli", "cclray.commands", "cclray.demo", "cclray.reproduce")
RAY_ALLOWED = ("cclray.train", "tune", "cclray.commands.tune", "export.scaleout")
HEAVY = {"torch", "ray", "zarr", "tensorstore", "onnx", "onnxruntime", "scipy", "sklearn", "skimage",
         "matplotlib", "nilearn", "optuna"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _optional(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``try: ... except ImportError`` (optional dependencies)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


@lru_cache(maxsize=None)
def imports(module: str, top_level_only: bool = False, required_only: bool = False) -> tuple[tuple[str, int], ...]:
    """``(imported module, line)`` of every import in ``module``; ``from X import Y`` gives ``X.Y`` when
    that is a module of this project or an external name (``from ray import tune`` -> ``ray.tune``).
    ``required_only``: without the imports guarded by ``except ImportError``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    optional = _optional(tree) if required_only else set()
    found = []
    for node in nodes:
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                project = base.split(".")[0] in PACKAGES
                found.append((sub if not project or sub in MODULES else base, node.lineno))
        elif (not top_level_only and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.append((node.args[0].value, node.lineno))
    return tuple(found)


def closure(module: str, top_level_only: bool = False, required_only: bool = False) -> dict[str, str]:
    """Every external module reached from ``module`` through project modules: ``{external: via}``."""
    seen, todo, external = {module}, [module], {}
    while todo:
        m = todo.pop()
        for name, line in imports(m, top_level_only, required_only):
            target = next((c for c in (name, name.rpartition(".")[0]) if c in MODULES), None)
            if target is None and name.split(".")[0] in PACKAGES:
                target = name.split(".")[0]
            if target is not None:
                for parent in _parents(target):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                    if parent not in seen:
                        seen.add(parent)
                        todo.append(parent)
            else:
                external.setdefault(name.split(".")[0], f"{MODULES[m].relative_to(ROOT)}:{line}")
    return external


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES]


def _breaches(modules, forbidden) -> list[str]:
    return [f"{MODULES[m].relative_to(ROOT)}:{line} imports {name}"
            for m in modules for name, line in imports(m) if _within(name, forbidden)]


def test_the_walk_sees_every_kind_of_import():
    """The checker itself: function-level, relative and ``from ray import tune`` imports are found."""
    names = {n for n, _ in imports("cclray.train")}
    assert {"ray.train", "torch", "cclray.config"} <= names
    assert "ray.tune" in {n for n, _ in imports("tune.trial")}  # inside run_trial
    assert "export.windows" in {n for n, _ in imports("export.runtime")}  # from .windows import ...
    assert "torch" in closure("cclray.train") and "torch" not in closure("cclray.cli", top_level_only=True)


def test_data_prep_imports_no_torch_ray_or_upper_layer():
    mods = [m for m in MODULES if _within(m, ["data_prep"])]
    assert not _breaches(mods, ["torch", "ray", "cclray", "tune", "export"])


@pytest.mark.parametrize("module", RUNTIME)
def test_runtime_side_needs_only_the_runtime_extra(module):
    stdlib = set(sys.stdlib_module_names)
    reach = closure(module, required_only=True)  # `try: import onnx / except ImportError` is optional
    bad = {k: v for k, v in reach.items() if k not in stdlib and k not in RUNTIME_EXTERNALS}
    assert not bad, f"{module} reaches {bad}: an inference host has only numpy, nibabel, onnxruntime"


def test_scale_out_synthesis_needs_no_torch():
    reach = closure("export.scaleout", required_only=True)
    assert not {k: v for k, v in reach.items() if k in ("torch", "zarr", "cclray", "tune")}
    assert not _breaches(["export.scaleout"], ["cclray", "tune", "export.onnx_export"])


def test_runtime_side_imports_no_cclray_tune_or_the_torch_side():
    assert not _breaches([m for m in MODULES if m in RUNTIME], ["cclray", "tune", "export.onnx_export"])


def test_cclray_reaches_tune_and_export_only_from_its_command_layer():
    mods = [m for m in MODULES if _within(m, ["cclray"]) and not _within(m, COMMAND_LAYER)]
    torch_side = [m for m in MODULES if _within(m, ["export"]) and m not in RUNTIME]
    assert not _breaches(mods, ["tune", *torch_side])


@pytest.mark.parametrize("forbidden, allowed", [
    ("ray.train", ["cclray.train"]),
    ("ray.tune", ["tune"]),
    ("ray", RAY_ALLOWED),
])
def test_ray_only_in_the_training_and_tuning_entry_points(forbidden, allowed):
    mods = [m for m in MODULES if not _within(m, allowed)]
    assert not _breaches(mods, [forbidden])


@pytest.mark.parametrize("module", ["cclray.cli", *[m for m in MODULES if _within(m, ["cclray.commands"])]])
def test_the_command_front_imports_nothing_heavy_at_module_level(module):
    heavy = {k: v for k, v in closure(module, top_level_only=True).items() if k in HEAVY}
    assert not heavy, f"{module}: `cclray --help` would import {heavy}"


def test_the_config_module_is_torch_free():
    assert not {k: v for k, v in closure("cclray.config", top_level_only=True).items() if k in HEAVY}
    assert not {k: v for k, v in closure("cclray.config").items() if k in ("torch", "ray")}
