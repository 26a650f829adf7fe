"""The package's shape (STYLE.md, issue #11): no import cycles, lazy or not; no module over ~25 KB;
no module reaching into another object's private attributes."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "kiteohlc_lab"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        is_pkg = p.name == "__init__.py"
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = m if is_pkg else m.rsplit(".", 1)[0]
                if node.level:
                    parts = base.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1])
                    t = f"{base}.{node.module}" if node.module else base
                else:
                    t = node.module or ""
                subs = [f"{t}.{a.name}" for a in node.names]
                # "from . import current" imports the module current, not the package's __init__
                targets = subs if all(x in mods for x in subs) else [t] + subs
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != m:
                    graph[m].add(t)
    return graph


def _related(a: str, b: str) -> bool:  # a package and its own children: re-exports, not a cycle
    return a.startswith(b + ".") or b.startswith(a + ".")


def test_no_import_cycles():
    graph = _imports(_modules())

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for w in graph[todo.pop()]:
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    cycles = sorted({tuple(sorted((m, w))) for m in graph for w in graph[m]
                     if not _related(m, w) and m in reach(w)})
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_over_25_kb():
    big = {str(p.relative_to(PKG.parent)): p.stat().st_size for p in _modules().values()
           if p.stat().st_size > 25 * 1024}
    assert not big, f"modules over 25 KB: {big}"


def test_no_private_attribute_written_on_another_object():
    hits = []
    for p in _modules().values():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    if (isinstance(t, ast.Attribute) and t.attr.startswith("_") and not t.attr.startswith("__")
                            and not (isinstance(t.value, ast.Name) and t.value.id in ("self", "cls"))):
                        hits.append(f"{p.relative_to(PKG.parent)}:{node.lineno} {ast.unparse(t)}")
    assert not hits, f"private attributes of other objects written: {hits}"
