"""The layers of docs/DESIGN.md hold: a module imports only its own layer's package and the layers below."""

import ast
import pathlib

import retain

# Lower numbers sit lower; a module may import a package of a lower rank, or its own package.
RANK = {
    "extras": 0, "util": 0, "metrics": 1, "data": 1, "models": 2, "quality": 2, "strategies": 3, "engine": 4,
    "store": 5, "config": 6, "monitor": 6, "build": 7, "checks": 8, "experiment": 8, "tasks": 8, "loop": 9,
    "__init__": 9, "tuning": 10, "translation": 10, "export_model": 10, "service": 11, "cli": 12, "__main__": 13,
}
SRC = pathlib.Path(retain.__file__).parent


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "retain":  # the package's front door
            for alias in node.names:
                yield node.lineno, alias.name if alias.name in RANK else "__init__"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("retain."):
            yield node.lineno, node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("retain."):
                    yield node.lineno, alias.name.split(".")[1]


def test_every_module_imports_only_its_layer_and_below():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        part = path.relative_to(SRC).parts[0].removesuffix(".py")
        if part == "__init__":  # the package's own front door
            continue
        assert part in RANK, f"{path}: a new top-level module or package needs its place in RANK"
        for line, target in _imports(path):
            if target != part and RANK[target] >= RANK[part]:
                problems.append(f"{path.relative_to(SRC)}:{line} ({part}) imports retain.{target}")
    assert problems == []


def test_the_data_layer_reads_files_without_the_model_layer():
    data = SRC / "data"
    assert not [p.name for p in data.glob("*.py") if any(t == "models" for _, t in _imports(p))]
