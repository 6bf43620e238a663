"""The import contract of src/cnnlab, read from the source with `ast` (imports inside functions included): layers
import only downward, no module imports itself round a circle, no module imports a command, no two modules share
a file name."""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# The layers, top to bottom. A module may import from its own package and from packages in
# lower rows; the packages on one row are independent peers and do not import each other.
LAYERS = (
    ("api", "cli"),
    ("lab",),
    ("experiments",),
    ("search", "diagnose", "visualize"),
    ("run",),
    ("models", "data"),
    ("engine",),
    ("config",),
    ("util",),
)
# cnnlab/__init__.py and cnnlab/errors.py: the bottom, which every layer may import and which imports no layer.
BOTTOM = frozenset({"cnnlab", "cnnlab.errors"})
# cnnlab/__init__.py's PEP 562 __getattr__: the package top hands out the Python API's names (cnnlab.train, ...) on
# first use; the bottom's one import of a layer. cnnlab.lab is both the lab book's package and the API's
# cnnlab.lab(lesson): once imported, the package is what the name binds, so it is callable and calls the API.
LAZY_API = frozenset({("cnnlab", "cnnlab.api"), ("cnnlab.lab", "cnnlab.api")})
# `python -m cnnlab.train` and `python -m cnnlab.lab`: they only forward to a command, outside the layers.
FORWARDERS = frozenset({"cnnlab.train", "cnnlab.lab.__main__"})

# Known breaches of the contract, allowed until the files they are in are restructured; delete an entry once its
# import is gone. Each is an (importing module, imported module) pair. Nothing else belongs here.
PENDING = frozenset()

RULE_LAYERS = "layers import only downward"
RULE_CIRCLES = "no import circles"
RULE_COMMANDS = "no module imports a command (they share code through library modules)"
RULE_NAMES = "no two modules share a file name"


def module_name(path: Path, src: Path = SRC) -> str:
    return ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {module_name(path, src): path for path in sorted((src / "cnnlab").rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool, modules) -> list[str]:
    """The modules of cnnlab one import statement names: `from a.b import c` is a.b.c where c is a module, else a.b;
    `import a.b.c` the longest part of it that is a module."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the module's package (its own name for a package's __init__)
            parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    else:
        return []
    found = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.split(".")[0] == "cnnlab" and name:
            found.append(name)
    return found


def import_graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """module -> {imported module of cnnlab: the line of its first import}, top-level and function-level alike."""
    files = module_files(src)
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for name in _imported(node, module, path.name == "__init__.py", files):
                if name != module:
                    edges[name] = min(edges.get(name, node.lineno), node.lineno)
        graph[module] = edges
    return graph


def _where(module: str, line: int) -> str:
    return f"{module} (line {line})"


def layer_problems(graph, layers=LAYERS, bottom=BOTTOM, exempt=FORWARDERS, allowed=PENDING | LAZY_API) -> list[str]:
    """Every import that goes up a layer or across to a peer, and every module in no layer."""
    rank = {package: row for row, packages in enumerate(layers) for package in packages}
    below_all = len(layers)

    def layer_of(module):
        if module in bottom:
            return "bottom", below_all
        package = module.split(".")[1] if module.count(".") else None
        return package, rank.get(package)

    problems = []
    for module, edges in sorted(graph.items()):
        if module in exempt:
            continue
        package, row = layer_of(module)
        if row is None:
            problems.append(f"{module} is in no layer of the table ({RULE_LAYERS}): add its package to LAYERS")
            continue
        for target, line in sorted(edges.items()):
            if (module, target) in allowed:
                continue
            target_package, target_row = layer_of(target)
            if target_row is None or target_package == package:
                continue
            if target_row == row:
                problems.append(f"{_where(module, line)} imports {target}: {package} and {target_package} are peers "
                                f"on one row ({RULE_LAYERS})")
            elif target_row < row:
                problems.append(f"{_where(module, line)} imports {target}: {target_package} is above {package} "
                                f"({RULE_LAYERS})")
    return problems


def circles(graph, allowed=PENDING | LAZY_API) -> list[list[tuple[str, int]]]:
    """One circle through each group of modules that import one another (Tarjan's strongly connected components):
    [(module, line of its import of the next one), ...], the last importing the first."""
    edges = {m: {t: line for t, line in e.items() if t in graph and (m, t) not in allowed} for m, e in graph.items()}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(root):  # iterative: deep import chains must not hit the recursion limit
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(group)

    for module in sorted(edges):
        if module not in index:
            visit(module)
    found = []
    for group in groups:  # the shortest way round from the group's first module back to it
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        while queue:
            node = queue.pop(0)
            if start in edges[node]:
                path = paths[node]
                found.append([(m, edges[m][n]) for m, n in zip(path, path[1:] + [start])])
                break
            for child in sorted(edges[node]):
                if child in group and child not in paths:
                    paths[child] = paths[node] + [child]
                    queue.append(child)
    return sorted(found)


def circle_problems(graph, allowed=PENDING | LAZY_API) -> list[str]:
    return [f"import circle ({RULE_CIRCLES}): " + " -> ".join(f"{_where(m, line)}" for m, line in circle)
            + f" -> {circle[0][0]}" for circle in circles(graph, allowed)]


def commands(pyproject: Path = REPO / "pyproject.toml") -> set[str]:
    """The modules of the console scripts."""
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    return {target.split(":")[0] for target in scripts.values()}


def command_problems(graph, command_modules, exempt=FORWARDERS) -> list[str]:
    return [f"{_where(module, line)} imports the command {target} ({RULE_COMMANDS})"
            for module, edges in sorted(graph.items()) if module not in exempt
            for target, line in sorted(edges.items()) if target in command_modules]


def name_problems(files: dict[str, Path], exempt=FORWARDERS) -> list[str]:
    by_name = defaultdict(list)
    for module, path in files.items():
        if module not in exempt and path.name not in ("__init__.py", "__main__.py"):
            by_name[path.name].append(module)
    return [f"{', '.join(sorted(modules))} share the file name {name} ({RULE_NAMES})"
            for name, modules in sorted(by_name.items()) if len(modules) > 1]


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_layers_import_only_downward(graph):
    problems = layer_problems(graph)
    assert not problems, "\n".join(problems)


def test_no_import_circles(graph):
    problems = circle_problems(graph)
    assert not problems, "\n".join(problems)


def test_no_module_imports_a_command_module(graph):
    """The console scripts share code through library modules (cnnlab.run.restore, cnnlab.run.weights, ...), never
    through one another: each entry point stays thin and can change without breaking the others."""
    found = commands()
    assert found and found <= set(graph), f"console scripts whose module is not in src/cnnlab: {found - set(graph)}"
    problems = command_problems(graph, found | FORWARDERS)
    assert not problems, "\n".join(problems)


def test_no_two_modules_share_a_file_name():
    problems = name_problems(module_files())
    assert not problems, "\n".join(problems)


def test_every_pending_exception_is_still_needed(graph):
    """An entry of PENDING that no longer excuses a breach (its import gone, or its circle broken elsewhere) is
    deleted, so the allowance cannot cover a later breach."""
    stale = [f"{a} -> {b}" for a, b in sorted(PENDING) if not layer_problems(graph, allowed=PENDING - {(a, b)})
             and not circle_problems(graph, allowed=PENDING - {(a, b)})]
    assert not stale, f"PENDING allows what is no longer there; delete: {', '.join(stale)}"


def test_the_graph_sees_imports_inside_functions_and_relative_ones(tmp_path):
    package = tmp_path / "cnnlab"
    (package / "run").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("")
    (package / "run" / "__init__.py").write_text("from . import lifecycle\n")
    (package / "run" / "lifecycle.py").write_text("def f():\n    from cnnlab.run import records\n"
                                                  "    import cnnlab.errors\n")
    (package / "run" / "records.py").write_text("from .lifecycle import f\nfrom cnnlab.errors import X\n")
    assert import_graph(tmp_path) == {
        "cnnlab": {}, "cnnlab.errors": {}, "cnnlab.run": {"cnnlab.run.lifecycle": 1},
        "cnnlab.run.lifecycle": {"cnnlab.run.records": 2, "cnnlab.errors": 3},
        "cnnlab.run.records": {"cnnlab.run.lifecycle": 1, "cnnlab.errors": 2}}


# Each rule fails when broken: a synthetic graph with one breach of it.

def test_an_upward_import_and_a_peer_import_are_named():
    graph = {"cnnlab.engine.tta": {"cnnlab.run.validate": 60, "cnnlab.errors": 3},
             "cnnlab.search.trial": {"cnnlab.diagnose.report": 7}, "cnnlab.run.validate": {"cnnlab.util.masking": 2},
             "cnnlab.errors": {}, "cnnlab.diagnose.report": {}, "cnnlab.util.masking": {}}
    assert layer_problems(graph, allowed=frozenset()) == [
        f"cnnlab.engine.tta (line 60) imports cnnlab.run.validate: run is above engine ({RULE_LAYERS})",
        f"cnnlab.search.trial (line 7) imports cnnlab.diagnose.report: search and diagnose are peers on one row "
        f"({RULE_LAYERS})"]
    assert layer_problems({"cnnlab.errors": {"cnnlab.util.masking": 4}}, allowed=frozenset()) == [
        f"cnnlab.errors (line 4) imports cnnlab.util.masking: util is above bottom ({RULE_LAYERS})"]
    assert "cnnlab.extra is in no layer" in layer_problems({"cnnlab.extra": {}})[0]
    assert layer_problems(graph, allowed=frozenset({("cnnlab.engine.tta", "cnnlab.run.validate"),
                                                    ("cnnlab.search.trial", "cnnlab.diagnose.report")})) == []


def test_a_circle_is_named_with_its_imports():
    graph = {"cnnlab.lab.runner": {"cnnlab.lab.extras": 96, "cnnlab.lab.lessons": 25},
             "cnnlab.lab.extras": {"cnnlab.lab.page": 12}, "cnnlab.lab.page": {"cnnlab.lab.runner": 24},
             "cnnlab.lab.lessons": {}}
    assert circle_problems(graph, allowed=frozenset()) == [
        f"import circle ({RULE_CIRCLES}): cnnlab.lab.extras (line 12) -> cnnlab.lab.page (line 24) -> "
        f"cnnlab.lab.runner (line 96) -> cnnlab.lab.extras"]
    assert circle_problems(graph, allowed=frozenset({("cnnlab.lab.page", "cnnlab.lab.runner")})) == []


def test_a_module_importing_a_command_is_named():
    graph = {"cnnlab.cli.tune": {"cnnlab.cli.train": 18, "cnnlab.cli.common": 3},
             "cnnlab.train": {"cnnlab.cli.train": 3}, "cnnlab.cli.train": {}, "cnnlab.cli.common": {}}
    assert command_problems(graph, {"cnnlab.cli.train", "cnnlab.cli.tune"}) == [
        f"cnnlab.cli.tune (line 18) imports the command cnnlab.cli.train ({RULE_COMMANDS})"]


def test_two_modules_with_one_file_name_are_named():
    files = {"cnnlab.models.layers": Path("cnnlab/models/layers.py"),
             "cnnlab.visualize.layers": Path("cnnlab/visualize/layers.py"),
             "cnnlab.train": Path("cnnlab/train.py"), "cnnlab.cli.train": Path("cnnlab/cli/train.py"),
             "cnnlab.run": Path("cnnlab/run/__init__.py"), "cnnlab.data": Path("cnnlab/data/__init__.py")}
    assert name_problems(files) == [
        f"cnnlab.models.layers, cnnlab.visualize.layers share the file name layers.py ({RULE_NAMES})"]
