"""Which of the program's names the tests get (loaded by path by ``_child.py``, used by the judge).

The tests see only the names they read and never bind themselves. A program name that would
shadow a builtin or a standard module (a program-made ``abs`` in ``assert abs(f(1) - 0.5) < 1e-6``,
a fake ``math``) never reaches them, with one exception: when it is the only name the tests take
from the program, it is the function under test (MBPP 126 asks for a function called ``sum``).
A module the program imported reaches them as the real standard module of that very name.
"""

import sys


def free_names(tests):
    """Names the tests read (anywhere) but never bind (at any level, imports included)."""
    import ast

    read, bound = set(), set()
    for source in tests:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name):
                (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(node.name)
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).partition(".")[0])
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
    return read - bound


def bind(tests, ready, decode):
    """``{name: value}`` for the tests' namespace from the worker's ``ready`` names (name -> encoded value).

    ``decode(data)`` rebuilds a plain value or a stand-in for a program object.
    """
    import builtins
    import importlib

    namespace = {}
    wanted = free_names(tests)
    offered = {name: data for name, data in ready.items() if type(name) is str and name in wanted}
    # A program name that would shadow a builtin or a module (a program-made `abs` in
    # `assert abs(f(1) - 0.5) < 1e-6`, a fake `math`) never reaches the tests, with one exception:
    # when it is the only name the tests take from the program, it is the function under test
    # (MBPP 126 asks for a function called `sum`).
    shadowing = {n for n in offered if n in vars(builtins) or n in sys.stdlib_module_names}
    plain = set(offered) - shadowing
    if not plain and len(shadowing) == 1:
        (only,) = shadowing
        data = offered[only]
        if type(data) is dict and set(data) == {"r"}:  # a function or class of the program
            plain = {only}
    for name, data in offered.items():
        try:
            if type(data) is dict and set(data) == {"m"}:
                # `import math` in the program, `math.isclose` in the tests: the judge imports the
                # real top-level standard module of that very name, never any other module
                if data["m"] == name and name in sys.stdlib_module_names and not name.startswith("_"):
                    namespace[name] = importlib.import_module(name)
                continue
            if name in plain:
                namespace[name] = decode(data)  # a plain value, or a handle on a program object
        except Exception:
            continue
    return namespace
