"""The route of the parameters through the code: every call that receives one, from the command to the engine.

Runs a command in this process under :func:`sys.settrace` and follows the values of ``--cfg`` and ``--seed``
from the command function to where they are used (the backend for ``chain run``, the engine for ``qtm
simulate``). A *stop* is a function of the project (``commands``, ``qtm``, ``chain``, ``validate``) whose
arguments carry a value: the value itself (a marked number, equal to nothing else the command uses, as text, as a
number or inside an array or table), or a dict, dataclass, tuple or list holding it, directly or one level down.
Every object a stop receives that holds the value is followed from then on. A function is one stop however
often it is called (``chain.seeds.image_seed`` once per image).

Each stop has a place: the command modules (``commands``), the parameter model's checks (``qtm.params``,
``qtm.validation``), the library of ``chain`` and ``validate``, or the rest of ``qtm`` (the ground: files,
provenance, random streams, the engines, which any floor above may use). A value is checked once, at the edge,
and handed down, so a *return* is a stop that goes back: a check after the route has left its checks (a lower
floor re-checking what the edge checked, as ``chain.seeds`` calling ``qtm.validation.check_int`` did), or a
command module after the route has left the command floor (a library calling back up).

Run: ``.venv/bin/python tools/parameter_route.py chain`` or ``... qtm`` (prints the stops, their floors and the
counts; exits 1 when the route has more than ``--max-stops`` stops or any return).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("qtm", "chain", "validate", "commands")
#: Values of the followed options that nothing else in a command is equal to, so that equality marks them
#: (``qtm simulate`` takes a seed for its particle engine only).
MARKS = {"chain": {"cfg": 7.4321, "seed": 90731}, "qtm": {"cfg": 7.4321}}
MARK_VALUES = frozenset(value for marks in MARKS.values() for value in marks.values())


class RouteEnd(Exception):
    """Raised inside the traced program when the route reaches its end."""


@cache
def module_of(filename: str) -> str | None:
    path = Path(filename).resolve()
    try:
        parts = path.relative_to(REPO).with_suffix("").parts
    except ValueError:
        return None
    return ".".join(parts) if parts and parts[0] in PACKAGES else None


#: The parameter model: where values are checked (at the edge, once).
CHECKS = ("qtm.params", "qtm.validation")


def floor(module: str) -> str:
    if module.startswith("commands."):
        return "command"
    if module in CHECKS:
        return "checks"
    return "ground" if module.startswith("qtm.") else "library"


def members(value) -> list:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list | tuple):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [getattr(value, field.name, None) for field in dataclasses.fields(value)]
    return []


def holds_mark(array: np.ndarray) -> bool:
    return array.dtype.kind in "iuf" and bool(np.isin(array, list(MARK_VALUES)).any())


def carries(value, followed: set[int], depth: int = 2) -> bool:
    if id(value) in followed:
        return True
    if isinstance(value, str):
        return any(str(mark) in value for mark in MARK_VALUES)
    if isinstance(value, np.ndarray):
        return holds_mark(value)
    if isinstance(value, pd.DataFrame | pd.Series):
        columns = [value[name] for name in value.columns] if isinstance(value, pd.DataFrame) else [value]
        return any(holds_mark(column.to_numpy()) for column in columns)
    if isinstance(value, float | int) and not isinstance(value, bool):
        try:
            return float(value) in MARK_VALUES
        except (TypeError, ValueError, OverflowError):
            return False
    if depth == 0:
        return False
    return any(carries(member, followed, depth - 1) for member in members(value))


class Route:
    def __init__(self, end_module: str, end_function: str | None = None):
        self.end_module, self.end_function = end_module, end_function
        self.stops: list[tuple[str, str]] = []
        self.followed: set[int] = set()
        self.keep: list = []  # holds followed objects alive so their ids stay theirs

    def trace(self, frame, event, arg):
        if event != "call":
            return None
        module = module_of(frame.f_code.co_filename)
        if module is None:
            return None
        name = frame.f_code.co_qualname
        code = frame.f_code
        count = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)
        arguments = [frame.f_locals[key] for key in code.co_varnames[:count] if key in frame.f_locals]
        carriers = [value for value in arguments if carries(value, self.followed)]
        if not carriers:
            return None
        for value in carriers:
            if not isinstance(value, float | int | str):
                self.followed.add(id(value))
                self.keep.append(value)
        if (module, name) not in self.stops:
            self.stops.append((module, name))
        if module.startswith(self.end_module) and (self.end_function is None or name.endswith(self.end_function)):
            raise RouteEnd
        return None

    def returns(self) -> list[int]:
        """Indices of the stops that go back to the checks or the command floor after the route left them."""
        left, previous, found = set(), None, []
        for index, (module, _) in enumerate(self.stops):
            here = floor(module)
            if here in ("checks", "command") and here in left:
                found.append(index)
            if previous is not None and previous != here:
                left.add(previous)
            previous = here
        return found


def follow(program: str) -> Route:
    marked = [item for name, value in MARKS[program].items() for item in (f"--{name}", str(value))]
    with tempfile.TemporaryDirectory() as scratch:
        if program == "chain":
            from commands.chain_program import app

            route = Route("chain.backends")
            argv = ["run", str(Path(scratch) / "run"), "--backend", "tiny", "--iterations", "1", *marked]
        else:
            from commands.qtm_program import app

            route = Route("qtm.recursion", "simulate_moments")
            argv = ["simulate", *marked, "--iterations", "2", "--out", str(Path(scratch) / "s.csv")]
        sys.settrace(route.trace)
        try:
            app(argv, standalone_mode=False)
        except RouteEnd:
            pass
        finally:
            sys.settrace(None)
    return route


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("program", choices=["chain", "qtm"])
    parser.add_argument("--max-stops", type=int, default=25)
    args = parser.parse_args()
    route = follow(args.program)
    returns = set(route.returns())
    for index, (module, name) in enumerate(route.stops):
        print(f"{index + 1:3d} {floor(module):8s} {module}.{name}{'   <- return' if index in returns else ''}")
    modules = {module for module, _ in route.stops}
    print(f"{args.program}: {len(route.stops)} stops in {len(modules)} modules, {len(returns)} returns")
    return 0 if len(route.stops) <= args.max_stops and not returns else 1


if __name__ == "__main__":
    sys.exit(main())
