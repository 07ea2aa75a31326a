"""Size figures of the orchestration layers (flows/, tasks/, smollm/), read from source only.

Prints, for a checkout of the project:
  (a) lines per layer: the lines of the .py files under flows/, tasks/ and smollm/, and of
      smollm/runs.py, smollm/stage.py, smollm/plan.py, smollm/lineage.py, smollm/results.py
      where they exist (lines counted as `wc -l` does);
  (b) the 10 longest functions (methods and nested functions included) across the three
      packages, as file:qualified name and length (`end_lineno - lineno + 1`, decorators excluded);
  (c) the number of functions in flows/ longer than 50 lines.

Pure `ast` and text: nothing of the project is imported, so it works on any checkout.

    python scripts/orchestration_figures.py [repo root]     (default: the current folder)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS = ("flows", "tasks", "smollm")
FILES = ("smollm/runs.py", "smollm/stage.py", "smollm/plan.py", "smollm/lineage.py", "smollm/results.py")
LIMIT = 50


def py_files(root: Path, layer: str) -> list[Path]:
    return sorted((root / layer).rglob("*.py"))


def line_count(path: Path) -> int:
    """Newlines in the file, as `wc -l` counts them."""
    return path.read_bytes().count(b"\n")


def functions(tree: ast.AST) -> list[tuple[str, int]]:
    """(qualified name, length in lines) of every function and method, nested ones included."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                found.append((name, child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else ".").resolve()
    print(f"repo root: {root}")
    print()
    print("(a) lines per layer (.py files, wc -l)")
    for layer in LAYERS:
        files = py_files(root, layer)
        print(f"  {layer + '/':<20} {sum(map(line_count, files)):>6} lines in {len(files)} files")
    for name in FILES:
        path = root / name
        if path.is_file():
            print(f"  {name:<20} {line_count(path):>6}")
        else:
            print(f"  {name:<20} {'-':>6} (absent)")

    everything: list[tuple[int, str]] = []
    long_in_flows: list[tuple[int, str]] = []
    for layer in LAYERS:
        for path in py_files(root, layer):
            rel = path.relative_to(root).as_posix()
            for name, length in functions(ast.parse(path.read_text(), filename=str(path))):
                everything.append((length, f"{rel}:{name}"))
                if layer == "flows" and length > LIMIT:
                    long_in_flows.append((length, f"{rel}:{name}"))

    print()
    print(f"(b) the 10 longest functions of {len(everything)} (end_lineno - lineno + 1)")
    for length, where in sorted(everything, key=lambda item: (-item[0], item[1]))[:10]:
        print(f"  {length:>5}  {where}")

    print()
    print(f"(c) functions in flows/ over {LIMIT} lines: {len(long_in_flows)}")
    for length, where in sorted(long_in_flows, key=lambda item: (-item[0], item[1])):
        print(f"  {length:>5}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
