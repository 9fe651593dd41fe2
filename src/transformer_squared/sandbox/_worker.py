"""The worker's main loop (loaded by path by ``_child.py``): lock down, run the program, answer the judge.

The worker holds the untrusted program. After the lock-down (``_lockdown.py``) and the guard
(``_guard.py``) it runs the program, reports the program's top-level names (plain values by value,
everything else as handles, modules by name), then only serves the judge's requests: call this
object with these arguments, read or set this attribute, list it, take its length. It never sees a
test, and what it sends back is data the judge decodes, never code.
"""


def main(codec, lockdown, guard):  # pragma: no cover - runs only inside the sandboxed interpreter
    """Lock the process down, run the program, then serve the judge's requests until it hangs up.

    ``codec``, ``lockdown`` and ``guard`` are the sibling modules ``_child.py`` loaded by path.
    """
    import builtins
    import json
    import os
    import sys
    import traceback
    import types

    payload_fd, result_fd, request_fd, reply_fd = (int(x) for x in sys.argv[2:6])
    # Private references, taken before any untrusted code can replace the module attributes.
    _read, _write, _exit, _close = os.read, os.write, os._exit, os.close
    _exec, _compile = builtins.exec, builtins.compile
    _BaseException, _SystemExit, _str, _type, _len = BaseException, SystemExit, str, type, len
    _settrace, _setprofile = sys.settrace, sys.setprofile
    _stdout, _stderr = sys.stdout, sys.stderr
    _print_exception = traceback.print_exception
    _send, _receive, _encode, _decode = codec.send, codec.receive, codec.encode, codec.decode
    features = []

    def fail_setup(message):
        with_newline = ("setup-failed " + message).replace("\n", " ") + "\n"
        try:
            _write(result_fd, with_newline.encode("utf-8", "replace"))
        finally:
            _exit(3)

    try:
        job = codec.read_job(_read, payload_fd)
    except Exception as err:
        fail_setup(f"could not read the job: {err!r}")
    # ---- Kernel layers, then the Python-level guard ----
    private_fds = lockdown.lock_down(
        job, (payload_fd, result_fd, request_fd, reply_fd), features, fail_setup, _exit, _close
    )
    guard.install_guard(private_fds, features)
    # ---- Program, then requests ----
    program = job["program"]
    del job
    refs = []
    module = types.ModuleType("solution")
    namespace = module.__dict__
    namespace["__builtins__"] = builtins
    sys.modules["solution"] = module
    _callable, _getattr, _list, _isinstance, _ModuleType = callable, getattr, list, isinstance, types.ModuleType
    _dict, _set, setattr_ = dict, set, setattr

    def flush():
        for stream in (_stdout, _stderr):
            try:
                stream.flush()
            except _BaseException:
                pass

    def reply(message):
        flush()
        try:
            _send(_write, reply_fd, message)
        except _BaseException:
            _exit(4)

    def failure(err):
        try:
            return [_str(_type(err).__name__)[:100], _str(err)[:300]]
        except _BaseException:
            return ["Exception", "<unprintable>"]

    def show(err):
        try:
            tb = err.__traceback__
            _print_exception(_type(err), err, tb.tb_next if tb is not None else None, file=_stderr)
        except _BaseException:
            pass

    def _quit(code=None):
        raise _SystemExit(code)

    builtins.exit = builtins.quit = _quit  # what the site module would add (-S leaves it out)
    _write(result_fd, b"setup " + json.dumps(features).encode() + b"\n")
    import linecache

    linecache.cache["<solution>"] = (len(program), None, program.splitlines(True), "<solution>")
    try:
        code = _compile(program, "<solution>", "exec", dont_inherit=True)
    except _BaseException as err:
        reply(
            {
                "error": "the program does not compile: "
                + ": ".join(failure(err))
                + (f" at line {err.lineno}" if _isinstance(err, SyntaxError) and err.lineno else "")
            }
        )
        _exit(0)

    # ---- Untrusted code from here on ----
    try:
        _exec(code, namespace)
    except _SystemExit:
        reply({"exit": "the program called exit() before the tests ran"})
        _exit(0)
    except _BaseException as err:
        show(err)
        where = ""
        tb = err.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<solution>":
                lines = program.splitlines()
                n = tb.tb_lineno
                where = f" at solution line {n}: {lines[n - 1].strip() if 0 < n <= _len(lines) else ''}"
            tb = tb.tb_next
        reply({"error": "the program raised " + ": ".join(failure(err)) + where})
        _exit(0)

    def encode_safe(value):
        try:
            return _encode(value, refs)
        except _BaseException:
            refs.append(value)
            return {"r": _len(refs) - 1}

    # The program's names: plain values by value, functions, classes and other objects as handles,
    # modules by name. The judge decides which of them the tests get.
    names = {}
    for name, value in _list(namespace.items()):
        if not _isinstance(name, _str) or name.startswith("__"):
            continue
        if _isinstance(value, _ModuleType):
            names[name] = {"m": _str(_getattr(value, "__name__", ""))}
        else:
            names[name] = encode_safe(value)
    reply({"ready": names})

    def lookup(index):
        if not (0 <= index < _len(refs)):
            raise LookupError("no such object")
        return refs[index]

    while True:
        try:
            request = _receive(_read, request_fd)
        except _BaseException:
            request = None
        if request is None:
            flush()
            _exit(0)
        try:
            op = request["op"]
            target = lookup(request["ref"])
            if op == "call":
                args = [_decode(a, lookup) for a in request["args"]]
                kwargs = {k: _decode(v, lookup) for k, v in request["kwargs"].items()}
                value = target(*args, **kwargs)
                after = [_encode(a, refs) if _type(a) in (_list, _dict, _set) else None for a in args]
                reply({"ok": encode_safe(value), "after": after})
            elif op == "getattr":
                reply({"ok": encode_safe(_getattr(target, request["name"]))})
            elif op == "setattr":
                setattr_(target, request["name"], _decode(request["value"], lookup))
                reply({"ok": None})
            elif op == "list":
                reply({"ok": encode_safe(_list(target))})
            elif op == "len":
                reply({"ok": _len(target)})
            else:
                reply({"exc": ["TypeError", "unsupported request"]})
        except _SystemExit:
            reply({"exit": "exit() was called"})
            _exit(0)
        except _BaseException as err:
            show(err)
            reply({"exc": failure(err)})


# ------------------------------------------------------------------ judge (tests and verdict)
