"""How much a newcomer reads for one run of each task: the project modules a task file imports, transitively.

    python benchmarks/shape.py

Counts, for colorization.py and segmentation.py, the project modules reached by top-level imports
(a plain `ast` walk: an `import a.b` or `from a.b import c` counts a/__init__.py when it is not empty,
a/b.py, and a/b/c.py when c is a module), their lines (all of them, blank and docstring lines too),
and the task file's own lines. Imports inside functions are not followed: the walk shows what a run
loads before it starts. Prints a table and, as its last line, one JSON object.
"""
import ast
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASK_FILES = ("colorization.py", "segmentation.py")
TARGETS = {"modules": 24, "lines": 2600, "task_file_lines": 260}  # what the layout is held to


def module_path(name, root=REPO):
    """The file of project module `name` ("data.cifar"), or None when it is not the project's."""
    base = root.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def top_level_imports(path):
    """Module names imported at the top level of `path` (inside `if` / `try` blocks too, not in functions)."""
    names = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.append(node.module)
                names.extend(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", [])
                      + [n for h in getattr(node, "handlers", []) for n in h.body])
    visit(ast.parse(path.read_text()).body)
    return names


def closure(start, root=REPO):
    """The non-empty project files reached from `start` by top-level imports (packages count their
    __init__.py), `start` included."""
    seen, todo = [], [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        for name in top_level_imports(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                found = module_path(".".join(parts[:i]), root)
                if found is not None and found not in seen:
                    todo.append(found)
    return [p for p in seen if p.read_text().strip()]


def measure(root=REPO):
    out = {}
    for task_file in TASK_FILES:
        files = closure(root / task_file, root)
        out[task_file] = {"modules": len(files), "lines": sum(len(p.read_text().splitlines()) for p in files),
                          "task_file_lines": len((root / task_file).read_text().splitlines()),
                          "files": sorted(str(p.relative_to(root)) for p in files)}
    return out


def main():
    result = measure()
    print(f"{'task file':<18} {'modules':>8} {'lines':>7} {'own lines':>10}   targets: at most "
          f"{TARGETS['modules']} / {TARGETS['lines']} / {TARGETS['task_file_lines']}")
    for task_file, r in result.items():
        print(f"{task_file:<18} {r['modules']:>8} {r['lines']:>7} {r['task_file_lines']:>10}")
    met = all(r[k] <= TARGETS[k] for r in result.values() for k in TARGETS)
    print(f"targets {'met' if met else 'MISSED'}")
    print(json.dumps({"benchmark": "shape", "targets": TARGETS, "met": met, "results": result}))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
