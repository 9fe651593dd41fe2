"""The judge (loaded by path by ``_child.py``): runs the tests, decides, writes the verdict.

The judge holds the tests (trusted data) and the verdict pipe to the parent. It runs the tests
against stand-ins for the program's names (:class:`Remote`, chosen by ``_names.py``) that forward
each call to the worker and rebuild the plain value that comes back, so every comparison happens
here, between the judge's own values. Objects that are not plain values stay in the worker and come
back as opaque handles that are equal only to themselves, so an object whose ``__eq__`` always
returns True cannot pass an ``assert f(x) == y``. Each line it writes carries the check's key,
which only the parent and the judge know.
"""

import sys


class _WorkerGone(BaseException):
    """The worker died or hung up: the check cannot pass (not catchable by a test's ``except Exception``)."""


class _WorkerExit(BaseException):
    """The program called exit() during a test."""


def main(codec, names):  # pragma: no cover - runs only inside the judge interpreter
    """Run the tests against stand-ins for the program's names; write the verdict for the parent.

    ``codec`` and ``names`` are the sibling modules ``_child.py`` loaded by path.
    """
    import builtins
    import json
    import os
    import resource
    import signal

    payload_fd, verdict_fd, request_fd, reply_fd = (int(x) for x in sys.argv[2:6])
    encode, decode, send, receive = codec.encode, codec.decode, codec.send, codec.receive
    features = []
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the parent
        # PR_SET_DUMPABLE 0: a process of the same uid (the worker, when the parent is not root)
        # can no longer open /proc/<judge>/fd/*, read /proc/<judge>/mem or environ, or ptrace us.
        # The parent sends the worker its program only after this line has run.
        if libc.prctl(4, 0, 0, 0, 0) == 0 and libc.prctl(3, 0, 0, 0, 0) == 0:  # set, then get
            features.append("judge_private")
    except Exception:
        pass
    key = None

    def line(message):
        os.write(verdict_fd, json.dumps({**message, "key": key}).encode() + b"\n")

    def verdict(status, detail=""):
        # the per-check key (known only to the parent and this process) makes the line the verdict
        line({"status": status, "detail": detail[:1000]})
        os._exit(0)

    try:
        job = codec.read_job(os.read, payload_fd)
        key = str(job["key"])
        line({"armed": features})
        limits = job["limits"]
        mib = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"] + 5,) * 2)
        resource.setrlimit(resource.RLIMIT_AS, ((limits["memory_mb"] + 512) * mib,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except Exception as err:
        verdict("sandbox_error", f"the judge could not start: {err!r}")
    tests = job["tests"]
    codes = [compile(t, f"<test {i + 1}>", "exec", dont_inherit=True) for i, t in enumerate(tests)]

    class Remote:
        """Stands for an object that stays in the worker: callable, attributes and iteration are
        forwarded; equality and hashing are identity (its own ``__eq__`` never runs here)."""

        __slots__ = ("_ref",)

        def __init__(self, ref):
            object.__setattr__(self, "_ref", ref)

        def __call__(self, *args, **kwargs):
            return rpc(
                {
                    "op": "call",
                    "ref": self._ref,
                    "args": [encode_arg(a) for a in args],
                    "kwargs": {k: encode_arg(v) for k, v in kwargs.items()},
                },
                args,
            )

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return rpc({"op": "getattr", "ref": self._ref, "name": name})

        def __setattr__(self, name, value):
            rpc({"op": "setattr", "ref": self._ref, "name": name, "value": encode_arg(value)})

        def __iter__(self):
            return iter(rpc({"op": "list", "ref": self._ref}))

        def __len__(self):
            return rpc({"op": "len", "ref": self._ref})

        def __repr__(self):
            return f"<object of the program #{self._ref}>"

    def encode_arg(value):
        refs = []
        if type(value) is Remote:
            return {"r": value._ref}
        data = encode(value, refs)
        if refs:  # a function or object of the tests cannot be handed to the program
            if all(type(r) is Remote for r in refs):
                return _rewrite(data, refs)
            raise TypeError(f"cannot pass {type(refs[0]).__name__} objects to the sandboxed program")
        return data

    def _rewrite(data, refs):
        if type(data) is dict and set(data) == {"r"}:
            return {"r": refs[data["r"]]._ref}
        if type(data) is dict:
            return {k: _rewrite(v, refs) for k, v in data.items()}
        if type(data) is list:
            return [_rewrite(v, refs) for v in data]
        return data

    exceptions = {
        name: obj for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, Exception)
    }

    def rpc(request, args=()):
        try:
            send(os.write, request_fd, request)
            answer = receive(os.read, reply_fd)
        except OSError:
            answer = None
        except ValueError as err:
            raise _WorkerGone(f"the program sent a malformed answer: {err}") from None
        if answer is None:
            raise _WorkerGone("the program's process ended")
        if "exit" in answer:
            raise _WorkerExit(answer["exit"])
        if "exc" in answer:
            name, message = (answer["exc"] + ["", ""])[:2]
            kind = exceptions.get(name, RuntimeError)
            raise kind(f"{message}" if kind is not RuntimeError else f"{name}: {message}")
        value = decode(answer.get("ok"), Remote)
        for arg, data in zip(args, answer.get("after") or [], strict=False):
            if data is None:
                continue
            new = decode(data, Remote)
            if type(arg) is list and type(new) is list:
                arg[:] = new
            elif type(arg) in (dict, set) and type(new) is type(arg):
                arg.clear()
                arg.update(new)
        return value

    first = receive(os.read, reply_fd)
    if first is None:
        verdict("gone", "the process ended before the tests ran")
    if "error" in first:
        verdict("error", first["error"])
    if "exit" in first:
        verdict("exited", first["exit"])
    namespace = {"__builtins__": builtins, "__name__": "__main__"}
    ready = first.get("ready") if type(first.get("ready")) is dict else {}
    namespace.update(names.bind(tests, ready, lambda data: decode(data, Remote)))

    def describe(err, prefix):
        import linecache

        for i, source in enumerate(tests):  # test sources reach linecache only now, after the run
            linecache.cache[f"<test {i + 1}>"] = (len(source), None, source.splitlines(True), f"<test {i + 1}>")
        try:
            message = str(err)
        except Exception:
            message = "<unprintable>"
        where = ""
        tb = err.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename.startswith("<test "):
                line = linecache.getline(filename, tb.tb_lineno).strip()
                where = f" at {filename[1:-1]} line {tb.tb_lineno}: {line}"
            tb = tb.tb_next
        return f"{prefix}{type(err).__name__}{': ' + message if message else ''}{where}"[:400]

    n = len(codes)
    for index, code in enumerate(codes):
        try:
            exec(code, namespace)
        except _WorkerExit as err:
            verdict("exited", f"{err} during test {index + 1} of {n}")
        except _WorkerGone as err:
            verdict("gone", f"{err} during test {index + 1} of {n}")
        except BaseException as err:  # noqa: BLE001 - any failure of a test is the verdict
            verdict("failed", describe(err, f"test {index + 1} of {n} failed: "))
    verdict("passed")
