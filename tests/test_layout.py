"""The package's layout: imports point down the layers, with no circles; no module too long; the map in the README.

Walks every ``import`` statement of ``keras_retina/`` and ``experiments/``,
those inside functions included, with :mod:`ast` (nothing is imported).
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_retina"

#: The layers, bottom first: a module may import its own layer's modules and those of the layers below.
#: ``keras_retina/__init__.py`` is above them all.
LAYERS = (
    ("compat", "visualize"),
    ("model",),
    ("config",),
    ("data",),
    ("evaluation", "pretrained"),
    ("training",),
    ("deploy",),
    ("recipes",),
    ("cli",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
MAX_LINES = 800


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, root: pathlib.Path = ROOT) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: pathlib.Path, root: pathlib.Path = ROOT) -> set[str]:
    """The keras_retina and experiments modules ``path`` imports, anywhere in it (function bodies included)."""
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                # `from P import name` imports the module P.name when there is one, else P.
                found.add(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}", root) else base)
    return {name for name in found if name.split(".")[0] in ("keras_retina", "experiments")}


def graph(directory: pathlib.Path) -> dict[str, set[str]]:
    return {module_name(path): imports(path) for path in sorted(directory.rglob("*.py"))}


def layer(name: str) -> str | None:
    """The layer of ``keras_retina.<layer>...``; None for the package's own ``__init__``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    for name in ("keras_retina/training/x.py", "keras_retina/training/rundir.py", "keras_retina/cli/modes.py",
                 "keras_retina/model/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    source = tmp_path / "keras_retina" / "training" / "x.py"
    source.write_text(
        "import numpy\n"
        "from keras_retina.model import RetinaNet\n"
        "def f():\n    from keras_retina.cli import modes\n    from . import rundir\n"
    )
    assert imports(source, tmp_path) == {"keras_retina.model", "keras_retina.cli.modes", "keras_retina.training.rundir"}


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles():
    edges = graph(PACKAGE)
    assert len(edges) > 40  # every module was walked
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_imports_point_down_the_layers():
    wrong = []
    for source, targets in graph(PACKAGE).items():
        for target in targets:
            if target.split(".")[0] != "keras_retina" or layer(source) is None:
                continue
            if layer(target) is None:
                wrong.append(f"{source} imports the top-level package")
            elif RANK[layer(target)] > RANK[layer(source)] or (
                RANK[layer(target)] == RANK[layer(source)] and layer(target) != layer(source)
            ):
                wrong.append(f"{source} ({layer(source)}) imports {target} ({layer(target)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_subpackage_has_a_layer():
    names = {path.parent.name if path.name == "__init__.py" else path.stem for path in PACKAGE.glob("*/__init__.py")}
    names |= {path.stem for path in PACKAGE.glob("*.py") if path.name != "__init__.py"}
    assert names == set(RANK)


def test_the_package_never_imports_the_experiments():
    offenders = {source: targets for source, targets in graph(PACKAGE).items() if any(
        t.split(".")[0] == "experiments" for t in targets)}
    assert not offenders


def test_experiments_use_only_the_public_api():
    """``keras_retina`` and its subpackages (their ``__init__``), never a module inside one."""
    private = []
    for source, targets in graph(ROOT / "experiments").items():
        for target in targets:
            if target.split(".")[0] == "keras_retina" and not (ROOT.joinpath(*target.split(".")) / "__init__.py").is_file():
                private.append(f"{source} imports {target}")
    assert not private, "\n".join(sorted(private))


@pytest.mark.parametrize("directory", ["keras_retina", "experiments"])
def test_no_module_over_the_limit(directory):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / directory).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_cocoeval_runs_in_one_place():
    calls = [str(p.relative_to(ROOT)) for directory in ("keras_retina", "experiments")
             for p in (ROOT / directory).rglob("*.py") for _ in re.finditer(r"\bCOCOeval\(", p.read_text())]
    assert calls == ["keras_retina/evaluation/coco.py"]


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout"):]
    modules = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
    missing = [m for m in modules if m.removeprefix("keras_retina/") not in section and m not in section]
    assert not missing, f"README's layout table does not name: {missing}"
