"""The house's rules, checked on every module and every import in it (at the top or inside a
function): each package imports only the packages below it (``docs/architecture.md``), no import
circle, the store below the tracker, only the glue knows Hydra and MLflow, no file too long."""

from __future__ import annotations

import ast
from pathlib import Path

ECOMP = Path(__file__).resolve().parents[1] / "ecomp"
# bottom to top; a module may import its own layer and those before it
LAYERS = [("errors", "redact", "plugins", "timing"), ("nets",), ("kernels",), ("measures",), ("core",), ("widths",),
          ("methods",), ("app",)]
GLUE_ONLY = ("hydra", "omegaconf", "mlflow", "optuna")


def module_name(path: Path) -> str:
    parts = path.relative_to(ECOMP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    head = module.split(".")[1] if module.count(".") else ""
    return next(i for i, names in enumerate(LAYERS) if head in names)


def imports(path: Path, top_level_only: bool = False) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import (the house uses absolute ones)"
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


MODULES = {module_name(p): p for p in ECOMP.rglob("*.py")}


def test_every_package_imports_only_the_packages_below_it():
    wrong = []
    for name, path in MODULES.items():
        if name == "ecomp":
            continue
        for target in imports(path):
            if target in MODULES and target != "ecomp" and layer(target) > layer(name):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_only_the_glue_knows_hydra_mlflow_and_optuna():
    wrong = [f"{name} imports {t}" for name, path in MODULES.items() if not name.startswith("ecomp.app")
             for t in imports(path) if t.split(".")[0] in GLUE_ONLY]
    assert not wrong, wrong


def import_graph(paths: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``paths`` it imports anywhere (at the top, in a function, in a class)."""
    return {name: {t for t in imports(path) if t in paths and t != name} for name, path in paths.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as ``[a, b, ..., a]``, or None."""
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph[node]):
            found = visit(nxt, stack + [node])
            if found:
                return found
        done.add(node)
        return None

    for name in sorted(graph):
        circle = visit(name, [])
        if circle:
            return circle
    return None


def test_no_import_circle_not_even_inside_functions():
    circle = find_circle(import_graph(MODULES))
    assert circle is None, " -> ".join(circle)


def test_the_store_sits_below_the_tracker():
    """The tracker calls the store (opening it, finding runs); the store never calls the tracker."""
    assert "ecomp.app.tracking" not in import_graph(MODULES)["ecomp.app.store"]


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import ecomp.b\n")
    b.write_text("def later():\n    from ecomp.a import thing\n    return thing\n")
    circle = find_circle(import_graph({"ecomp.a": a, "ecomp.b": b}))
    assert circle is not None and set(circle) == {"ecomp.a", "ecomp.b"}
    b.write_text("def later():\n    return 1\n")
    assert find_circle(import_graph({"ecomp.a": a, "ecomp.b": b})) is None


def test_the_rules_would_catch_a_break(tmp_path):
    """The checks above see what they check: an upward and a glue import are named."""
    assert layer("ecomp.core.fitness") > layer("ecomp.kernels.forward") > layer("ecomp.nets.population")
    bad = tmp_path / "bad.py"
    bad.write_text("import mlflow\nfrom ecomp.app.config import validate\n")
    found = imports(bad)
    assert "mlflow" in found and "ecomp.app.config" in found and layer("ecomp.app.config") > layer("ecomp.core.evolution")


def test_no_file_is_over_about_400_lines():
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long
