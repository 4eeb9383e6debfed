"""The floors of the code base, with one-way arrows, read from the source (every import, also inside functions).

``qtm`` is the ground (numpy, scipy, numba: never torch); ``chain`` and ``validate`` stand on it side by side and
never import each other; the command modules of both programs (the ``commands`` folder) stand on all three, and
nothing below imports them; the ``qtm`` program's commands need neither ``chain`` nor ``validate``. A package never
imports another package's private modules or names, and no two modules import each other, directly or around a
loop. Deterministic: no false failures.
"""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("qtm", "chain", "validate", "commands")
#: Libraries the ground floor must not need (they come with the chain extra).
HEAVY = ("torch", "diffusers", "transformers", "open_clip", "peft", "accelerate")
#: A string that names a module of an upper floor, e.g. one handed to ``python -m`` or importlib.
UPPER_MODULE_NAME = re.compile(r"^(chain|validate|commands)(\.[A-Za-z_]\w*)+$")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_cli(module: str) -> bool:
    return module.split(".")[0] == "commands"


def floor(module: str) -> str:
    """The floor of a module: qtm, chain, validate, or cli (the command floor)."""
    return "cli" if is_cli(module) else module.split(".")[0]


def serves_qtm_program(module: str) -> bool:
    """A module the ``qtm`` program loads: its commands and the command floor's shared modules."""
    return is_cli(module) and not module.startswith(("commands.chain_",))


def imports(path: Path, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import statement of the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base, [alias.name for alias in node.names]))
    return found


def string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def violations(root: Path = REPO) -> list[str]:
    """Every import (or module-name string) of the packages under ``root`` that breaks the floors."""
    found = []
    edges = set()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            where = f"{path.relative_to(root)}"
            for line, target, names in imports(path, module):
                top = target.split(".")[0]
                at = f"{where}:{line} imports {target}"
                if package == "qtm" and top in (*HEAVY, "chain", "validate", "commands"):
                    found.append(f"{at}: qtm is the ground floor (no chain, validate or torch-like libraries)")
                if serves_qtm_program(module) and top in (*HEAVY, "chain", "validate"):
                    found.append(f"{at}: the qtm program runs without the chain extra")
                if top not in PACKAGES:
                    continue
                # `from package import module` imports a module too.
                targets = [target] + [f"{target}.{name}" for name in names]
                if not is_cli(module):
                    if {package, top} == {"chain", "validate"}:
                        found.append(f"{at}: chain and validate stand side by side and do not import each other")
                    if any(is_cli(t) and _is_module(root, t) for t in targets):
                        found.append(f"{at}: only command-line modules import command-line modules")
                if top != package:
                    private = [part for part in target.split(".") if part.startswith("_") and part != "__init__"]
                    private += [name for name in names if name.startswith("_")]
                    if private:
                        found.append(f"{at}: {', '.join(private)} is private to {top}")
                if floor(target) != floor(module):
                    edges.add((floor(module), floor(target)))
            if package == "qtm":
                for line, value in string_constants(path):
                    if UPPER_MODULE_NAME.match(value):
                        found.append(f"{where}:{line} names the module {value!r}: qtm does not run upper floors")
    found += [f"packages import each other in a cycle: {' -> '.join(cycle)}" for cycle in _cycles(edges)]
    return found


def _is_module(root: Path, name: str) -> bool:
    path = root / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """One cycle per strongly connected group of floors (depth-first search from each floor)."""
    graph = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
    cycles, seen = [], set()

    def visit(node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycle = [*path[path.index(nxt) :], nxt]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    cycles.append(cycle)
            else:
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])
    return cycles


def module_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Every module of the packages and the modules of the packages it imports, at any depth of its code.

    ``from package import name`` is an edge to ``package.name`` when that is a module, else to ``package``.
    """
    graph = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            targets = graph.setdefault(module, set())
            for _, target, names in imports(path, module):
                if target.split(".")[0] not in PACKAGES:
                    continue
                submodules = [f"{target}.{name}" for name in names if _is_module(root, f"{target}.{name}")]
                targets.update(submodules)
                if len(submodules) < len(names) or not names:
                    targets.add(target)
            targets.discard(module)
    return graph


def module_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or around a loop (Tarjan's strongly connected
    components, each listed sorted)."""
    order, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module):
        order[module] = low[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return groups


def test_the_floors_have_one_way_arrows():
    assert violations() == []


def test_no_import_cycle_between_modules_even_inside_functions():
    assert module_cycles(module_graph()) == []


#: One concept per module: a library module longer than this holds several and is split along them.
MAX_MODULE_LINES = 500


def test_no_library_module_holds_more_than_500_lines():
    long = {str(path.relative_to(REPO)): lines for package in PACKAGES for path in (REPO / package).rglob("*.py")
            if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_the_architecture_page_lists_every_module_and_the_package_graph():
    """docs/architecture.md names every module (with its one concept) and draws the packages' imports as they are."""
    page = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)+)`", page))
    graph = module_graph()
    missing = sorted(m for m in graph if m.count(".") and not m.endswith("__init__") and m not in named
                     and not (REPO / Path(*m.split("."))).is_dir())
    assert missing == []
    drawn = page.split("<!-- import-graph -->")[1].split("```")[1].strip().splitlines()
    packages = {}
    for module, targets in graph.items():
        packages.setdefault(module.split(".")[0], set()).update(
            t.split(".")[0] for t in targets if t.split(".")[0] != module.split(".")[0])
    actual = sorted(f"{p} -> {', '.join(sorted(t)) or '(nothing)'}" for p, t in packages.items())
    assert sorted(drawn) == actual


def test_a_function_level_cycle_is_caught(tmp_path):
    (tmp_path / "chain").mkdir()
    (tmp_path / "chain" / "__init__.py").write_text("")
    (tmp_path / "chain" / "data.py").write_text("def load():\n    from chain import npm_data\n")
    (tmp_path / "chain" / "npm_data.py").write_text("from chain.data import Dataset\n")
    (tmp_path / "chain" / "runner.py").write_text("from chain import data\n")
    assert module_cycles(module_graph(tmp_path)) == [["chain.data", "chain.npm_data"]]


@pytest.mark.parametrize(
    ("package", "module", "source", "broken"),
    [
        ("qtm", "model.py", "import torch\n", "ground floor"),
        ("qtm", "model.py", "def f():\n    from validate.fitting import fit\n", "ground floor"),
        ("qtm", "model.py", "COMMAND = ['python', '-m', 'validate.verify_sampler']\n", "names the module"),
        ("chain", "runner.py", "def f():\n    from validate.runs import read_run\n", "side by side"),
        ("validate", "runs.py", "from chain.errors import ChainError\n", "side by side"),
        ("validate", "fit.py", "from qtm.particles._kernels import step\n", "private to qtm"),
        ("validate", "fit.py", "from qtm.gaussian import _check\n", "private to qtm"),
        ("chain", "runner.py", "from commands import common\n", "only command-line modules"),
        ("commands", "qtm_map.py", "from chain.data import load_dataset\n", "without the chain extra"),
        ("commands", "common.py", "import torch\n", "without the chain extra"),
    ],
)
def test_each_broken_arrow_is_caught(tmp_path, package, module, source, broken):
    for name in PACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "commands" / "common.py").write_text("")
    (tmp_path / package / module).write_text(source)
    found = violations(tmp_path)
    assert len(found) >= 1 and any(broken in message for message in found), found


def test_the_command_floor_is_a_folder():
    """Command modules live in ``commands/``, not beside the library modules they call."""
    stray = [str(path.relative_to(REPO)) for package in ("qtm", "chain", "validate")
             for path in (REPO / package).rglob("cli*.py")]
    assert stray == []


def test_a_cycle_between_floors_is_caught():
    assert _cycles({("chain", "validate"), ("validate", "chain"), ("cli", "chain")}) == [["chain", "validate", "chain"]]
