"""The two sandboxed interpreters of one check, run by path as ``python -I -S _child.py ROLE FD...``.

``worker`` (``_worker.py``) holds the untrusted program: it locks itself down (``_lockdown.py``:
namespaces, throwaway uid, empty mounts over site-packages/the checkout/data caches, rlimits; then
``_guard.py``, a Python guard), runs the program, then only answers requests from the judge: call
this function with these arguments, read this attribute, list this object. It returns plain values
in a serialised form (``_codec.py``) and never sees a test.

``judge`` (``_judge.py``) holds the tests (trusted data) and the verdict pipe to the parent. It runs
the tests against stand-ins for the program's names (which ones: ``_names.py``) that forward each
call to the worker and rebuild the plain value that comes back, so every comparison happens in the
judge, between its own values. Nothing the worker does can reach the verdict: it has no handle on
the judge's pipe, and what it sends is data that is decoded, never executed.

Both roles use only the standard library (``-I -S``: no site-packages, no script directory on
``sys.path``), so nothing here imports ``transformer_squared``: this file loads its siblings by path,
all of them before the worker's lock-down hides the folder they live in.
"""

import sys

ROLES = {"worker": ("_worker", "_codec", "_lockdown", "_guard"), "judge": ("_judge", "_codec", "_names")}


def load(name):
    """Run the sibling file ``<name>.py`` as a new module (not registered in ``sys.modules``)."""
    import os
    import types

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    with open(path, encoding="utf-8") as fh:
        code = compile(fh.read(), path, "exec", dont_inherit=True)
    module = types.ModuleType("t2_sandbox_" + name.lstrip("_"))
    module.__file__ = path
    exec(code, module.__dict__)
    return module


if __name__ == "__main__":
    main, *helpers = (load(name) for name in ROLES[sys.argv[1]])
    main.main(*helpers)
