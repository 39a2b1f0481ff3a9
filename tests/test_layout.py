"""The layout stays walkable: no import cycle between rsample's modules, producer -> workers only, every folder
installed under `rsample`, every bound in `defaults` explained. Read from the source with `ast`, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"rsample.workers": REPO / "workers", "rsample.producer": REPO / "producer"}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the installed packages."""
    modules = {}
    for package, root in PACKAGE_DIRS.items():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that `path` imports when it runs: module level and inside functions, but not the imports
    that only type checkers see (`if TYPE_CHECKING:`)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, modules) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a set of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    graph = import_graph()
    assert len(graph) > 40, "the scan found too few modules to be looking at the project"
    assert cycles(graph) == []


def test_workers_never_import_the_producer():
    graph = import_graph()
    upward = sorted(f"{module} -> {target}" for module, targets in graph.items() if module.startswith("rsample.workers")
                    for target in targets if target.startswith("rsample.producer"))
    assert upward == []
    assert any(t.startswith("rsample.workers") for m, ts in graph.items() if m.startswith("rsample.producer") for t in ts)


def test_common_builds_on_nothing_but_the_backend_and_reward_names():
    graph = import_graph()
    allowed = {"rsample.workers.backends.registry", "rsample.workers.backends.reward_specs"}
    for module, targets in graph.items():
        if module.startswith("rsample.workers.common"):
            assert {t for t in targets if not t.startswith("rsample.workers.common")} <= allowed, module
    assert graph["rsample.workers.backends.registry"] <= {"rsample.workers.backends.reward_specs", "rsample.workers.backends.functions"}
    assert graph["rsample.workers.backends.reward_specs"] == {"rsample.workers.common.errors"}


def test_nothing_imports_the_old_top_level_names():
    """`workers` and `producer` are folders, not import names: everything goes through `rsample`."""
    offenders = []
    for path in [*REPO.glob("workers/**/*.py"), *REPO.glob("producer/**/*.py"), *REPO.glob("tests/*.py"), *REPO.glob("bench/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("workers", "producer")]
    assert offenders == []


def test_every_package_folder_is_installed_under_rsample():
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert settings["package-dir"] == {name: str(path.relative_to(REPO)) for name, path in PACKAGE_DIRS.items()}
    folders = {name for name, path in project_modules().items() if path.name == "__init__.py"}
    assert set(settings["packages"]) == folders


def test_torch_is_a_lower_bound_not_a_pin():
    """A pinned torch would replace a GPU machine's CUDA build; this machine's install commands name 2.13.0 instead."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in dependencies if d.split(">")[0].split("=")[0].strip() == "torch"]
    assert torch and ">=" in torch[0] and "==" not in torch[0]


def test_every_default_says_why():
    """Each bound in `defaults` is followed by a docstring saying what it bounds and why."""
    body = ast.parse((REPO / "workers/common/defaults.py").read_text()).body
    for statement, following in zip(body, body[1:] + [None]):
        if isinstance(statement, ast.Assign):
            name = statement.targets[0].id
            assert isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant), f"{name} has no docstring"
            assert len(following.value.value.split()) >= 4, f"{name}'s docstring says too little"
