"""The import rules of docs/architecture.md, checked in fresh interpreters."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

RULES = [
    ("napari_wsi_sam.slide", ["torch", "napari", "qtpy", "openslide"]),  # loaded on use
    ("napari_wsi_sam.model", ["napari", "qtpy", "tifffile", "zarr"]),
    ("napari_wsi_sam.assets", ["torch", "napari"]),
    ("napari_wsi_sam.store", ["torch", "napari", "qtpy"]),
    ("napari_wsi_sam.formats", ["torch", "napari", "qtpy"]),
    ("napari_wsi_sam.polygons", ["torch", "napari", "qtpy"]),
    ("napari_wsi_sam.pipeline", ["napari", "qtpy"]),
    ("napari_wsi_sam.prompts", ["torch", "napari", "tifffile"]),
    ("napari_wsi_sam.train.trainer", ["napari", "qtpy"]),
    ("napari_wsi_sam.train.sampler", ["torch", "napari", "qtpy"]),
    ("napari_wsi_sam.train.prompt_noise", ["torch", "napari"]),
    ("napari_wsi_sam.train.datasets", ["torch", "napari"]),
    ("napari_wsi_sam.evaluation.runner", ["napari", "qtpy"]),
    ("napari_wsi_sam.evaluation.report", ["torch", "napari"]),
    ("napari_wsi_sam.evaluation.instances", ["torch", "napari"]),
    ("napari_wsi_sam.model.registry", ["torch", "napari", "qtpy"]),
    ("napari_wsi_sam.model", ["torch"]),
    ("napari_wsi_sam.cli", ["torch", "napari", "qtpy", "fastapi", "uvicorn"]),
    ("napari_wsi_sam.serve", ["napari", "qtpy", "magicgui"]),
    ("napari_wsi_sam.scale", ["numpy", "torch"]),
    ("napari_wsi_sam.windows", ["torch"]),
    ("napari_wsi_sam.session", ["napari", "qtpy", "magicgui"]),
    ("napari_wsi_sam.cohort.batch", ["napari", "qtpy", "magicgui"]),
    ("napari_wsi_sam.cohort.manifest", ["torch", "napari", "distributed"]),
    ("napari_wsi_sam.slide.tissue", ["torch", "napari"]),
    ("napari_wsi_sam.store.object_store", ["torch", "napari", "qtpy"]),
]
PACKAGE = Path(__file__).resolve().parent.parent / "src" / "napari_wsi_sam"
UI_ONLY = ("napari", "qtpy", "magicgui", "vispy", "superqt")


def module_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere: at import time, inside functions
    and for type checking alike (a cycle hidden in a function is still a cycle)."""
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if parts[-1] == "__init__" else name.rpartition(".")[0]
        found = set()
        for node in [ast.parse(path.read_text())]:
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom):
                    base = sub.module or ""
                    if sub.level:
                        anchor = package.split(".")
                        anchor = anchor[:len(anchor) - sub.level + 1]
                        base = ".".join([*anchor, base] if base else anchor)
                    if base.startswith("napari_wsi_sam"):
                        # "from . import sources" imports a module, not the package's names
                        subs = {f"{base}.{a.name}" for a in sub.names} & modules
                        found |= subs or {base}
                elif isinstance(sub, ast.Import):
                    found.update(a.name for a in sub.names if a.name.startswith("napari_wsi_sam"))
        graph[name] = found
    return {k: {m for m in v if m in graph and m != k} for k, v in graph.items()}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles():
    graph = module_imports()
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycle = stack[stack.index(node):]
            # a package importing its own submodules is not a cycle between modules
            if not all(m.startswith(cycle[0]) or cycle[0].startswith(m) for m in cycle):
                cycles.append(" -> ".join([*cycle, node]))
            return
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, [*stack, node])
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


def test_only_the_ui_and_view_import_napari_or_qt():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("ui/") or rel == "cli/view.py":
            continue
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and not n.level}
        assert not names & set(UI_ONLY), f"{rel} imports {names & set(UI_ONLY)}"


def test_only_the_openslide_backend_imports_openslide():
    """OpenSlide is one backend of `slide/`; nothing else may depend on it directly."""
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and not n.level}
        if "openslide" in names:
            assert rel == "slide/openslide_source.py", f"{rel} imports openslide"


@pytest.mark.slow  # fresh interpreters
def test_importing_the_model_leaves_triton_alone():
    """The triton workaround belongs to napari processes only (napari_wsi_sam._triton)."""
    code = ("import sys, napari_wsi_sam.model.predictor; "
            "print('triton' in sys.modules and sys.modules['triton'] is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow  # one fresh interpreter per rule
@pytest.mark.parametrize(("module", "forbidden"), RULES)
def test_module_does_not_import(module, forbidden):
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {forbidden!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


def test_train_never_imports_evaluation():
    """The held-out proof of a user's head sits above both (`session.own_head`)."""
    graph = module_imports()
    offenders = {m: sorted(t for t in targets if t.startswith("napari_wsi_sam.evaluation"))
                 for m, targets in graph.items() if m.startswith("napari_wsi_sam.train")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_objects_live_in_store_and_formats_not_annotations():
    assert not (PACKAGE / "annotations").exists()
    assert (PACKAGE / "store" / "object_store.py").is_file()
    assert (PACKAGE / "formats" / "registry.py").is_file()
    graph = module_imports()
    # the store never reaches for a file format; formats may read the store (label export)
    store_to_formats = {m: sorted(t for t in ts if t.startswith("napari_wsi_sam.formats"))
                        for m, ts in graph.items() if m.startswith("napari_wsi_sam.store")}
    assert {m: t for m, t in store_to_formats.items() if t} == {}


def test_every_format_module_is_in_the_registry():
    from napari_wsi_sam.formats.registry import FORMATS

    helpers = {"__init__", "file_io", "format", "records", "registry", "ome_zarr_labels"}
    modules = {p.stem for p in (PACKAGE / "formats").glob("*.py")} - helpers
    registered = {f.read.__module__ if f.read else f.write.__module__ for f in FORMATS}
    assert {f"napari_wsi_sam.formats.{m}" for m in modules} == registered
