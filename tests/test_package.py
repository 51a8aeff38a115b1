"""The package's public API and layering: `import adapterkit` is light, no import cycles, lazy registrations."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import adapterkit

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "adapterkit"


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (imports are process-global) and return its stdout."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_every_public_name_resolves_and_the_version_matches_pyproject() -> None:
    assert "__version__" in adapterkit.__all__ and len(adapterkit.__all__) == len(set(adapterkit.__all__))
    for name in adapterkit.__all__:
        assert getattr(adapterkit, name) is not None, name
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert adapterkit.__version__ == version
    from adapterkit.model import AdaptedModel

    assert adapterkit.AdaptedModel is AdaptedModel


def test_import_adapterkit_is_light() -> None:
    out = run_python("import sys, adapterkit; print('torch' in sys.modules, 'transformers' in sys.modules)")
    assert out == "False False"


def test_importing_the_model_imports_no_method_and_registers_no_attention() -> None:
    out = run_python(
        "import sys, adapterkit.model\n"
        "from transformers import AttentionInterface\n"
        "print(sorted(m for m in sys.modules if m.startswith('adapterkit.methods.') and m != 'adapterkit.methods.base'))\n"
        "print('adapterkit_prefix_sdpa' in AttentionInterface._global_mapping)\n"
        "from adapterkit.registry import METHODS\n"
        "print('lora' in METHODS)\n"  # first lookup registers the built-ins
        "print('adapterkit_prefix_sdpa' in AttentionInterface._global_mapping)\n"
        "from adapterkit import AdaptedModel, PrefixTuningConfig\n"
        "from adapterkit.testing import tiny_model\n"
        "AdaptedModel(tiny_model('bert')).add_adapter('p', PrefixTuningConfig())\n"
        "print('adapterkit_prefix_sdpa' in AttentionInterface._global_mapping)\n"
    )
    assert out.splitlines() == ["[]", "False", "True", "False", "True"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """adapterkit module -> the adapterkit modules it imports, at module level *or inside functions* (lazy
    imports count: a cycle through a function-level import is still a cycle). Parent packages of a module
    are not counted as its imports."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                targets.add(module)
                targets.update(f"{module}.{a.name}" for a in node.names)
        deps = set()
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in modules and dep != name and not name.startswith(dep + "."):
                    deps.add(dep)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert {"adapterkit.io", "adapterkit.registry", "adapterkit.model"} <= set(graph)
    assert "adapterkit.registry" in graph["adapterkit.io"]  # the graph sees real edges
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
