"""The layers of docs/architecture.md: every import of a skiptune module goes down the stack (or stays inside
its own package), and the results store imports without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "skiptune"

#: bottom to top; a package may import its own modules and those of lower layers, never a sibling or a higher one
LAYERS: list[set[str]] = [
    {"core"},
    {"store", "nets", "sampling", "metrics"},
    {"adapters"},
    {"skip"},
    {"io"},
    {"train"},
    {"experiment"},
    {"distributed"},
    {"runs"},
    {"analysis"},
    {"report"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _package(module: str) -> str | None:
    """``skiptune.runs.sweep`` -> ``runs``; the bare ``skiptune`` package (lazy attributes, version) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports() -> list[tuple[str, int, str]]:
    """(file, line, imported skiptune module) for every import statement, including function-local ones."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                names = [".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-node.level])
                         + (f".{node.module}" if node.module else "")]
            else:
                continue
            out += [(str(path.relative_to(SRC)), node.lineno, n) for n in names if n.split(".")[0] == "skiptune"]
    return out


def test_every_package_is_placed_in_a_layer():
    packages = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert packages == set(LEVEL), f"place these in LAYERS (and in docs/architecture.md): {packages ^ set(LEVEL)}"


def test_imports_only_go_down():
    upward = []
    for file, line, target in _imports():
        src, dst = Path(file).parts[0].removesuffix(".py"), _package(target)
        if src == "__init__.py" or dst is None or dst == src:
            continue
        if LEVEL[dst] >= LEVEL[src]:
            upward.append(f"{file}:{line} imports {target} ({src} is layer {LEVEL[src]}, {dst} is {LEVEL[dst]})")
    assert not upward, "imports that go up or sideways:\n" + "\n".join(upward)


def test_the_store_imports_without_torch():
    code = "import sys, skiptune.store; assert 'torch' not in sys.modules, [m for m in sys.modules if 'torch' in m]"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
