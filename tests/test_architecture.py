"""Layering: the config path is import-light (a typo is reported before torch, transformers or diffusers are
imported), and the package has no import cycles (function-level imports count)."""

import ast
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers")


def heavy_modules_after(code: str) -> list[str]:
    probe = code + f"\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


def test_schema_stages_families_and_inspector_import_no_heavy_library():
    assert heavy_modules_after("import magicme.schema, magicme.inspector, magicme.families, magicme.prompts") == []


def test_sample_py_reports_a_typo_before_importing_torch():
    code = ("import contextlib, io, sample\nerr = io.StringIO()\nwith contextlib.redirect_stderr(err):\n"
            "    assert sample.main(['--config', 'configs/tiny/sample.yaml', 'steps=four']) == 2\n"
            "assert 'steps' in err.getvalue()")
    assert heavy_modules_after(code) == []


def module_imports(root: Path) -> dict[str, set[str]]:
    """{module: the magicme modules it imports anywhere in its body (function-level imports count too)}."""
    names = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}
    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).strip(".")
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names}
        graph[name] = {m for m in found if m in names and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycles():
    graph = module_imports(Path(__file__).resolve().parents[1] / "magicme")
    assert "magicme.safetensors_header" in graph["magicme.embeddings"]  # a function-level import is seen
    assert cycles(graph) == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
