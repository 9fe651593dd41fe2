"""The two sandboxed interpreters of one check, run by path as ``python -I -S _child.py ROLE FD...``.

``worker`` holds the untrusted program: it locks itself down (namespaces, throwaway uid, empty
mounts over site-packages/the checkout/data caches, rlimits, a Python guard), runs the program,
then only answers requests from the judge: call this function with these arguments, read this
attribute, list this object. It returns plain values in a serialised form and never sees a test.

``judge`` holds the tests (trusted data) and the verdict pipe to the parent. It runs the tests
against stand-ins for the program's names that forward each call to the worker and rebuild the
plain value that comes back, so every comparison happens in the judge, between its own values.
Nothing the worker does can reach the verdict: it has no handle on the judge's pipe, and what it
sends is data that is decoded, never executed. Objects that are not plain values stay in the
worker and come back as opaque handles that are equal only to themselves, so an object whose
``__eq__`` always returns True cannot pass an ``assert f(x) == y``.

Both roles use only the standard library (``-I -S``: no site-packages, no script directory).
"""

import sys

MAX_MESSAGE = 16 << 20  # bytes of one serialised message
MAX_DEPTH = 100


# ------------------------------------------------------------------ codec (plain values only)


def encode(value, refs, depth=0):
    """A JSON-able form of ``value``: exact builtin value types (and Fraction/Decimal) by value,
    anything else (subclasses included) as a handle ``{"r": n}`` into ``refs``."""
    from decimal import Decimal
    from fractions import Fraction

    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if -(1 << 53) < value < (1 << 53) else {"i": hex(value)}
    if kind is float:
        return {"f": value.hex()}
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if kind in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "s", frozenset: "z"}[kind]
        return {tag: [encode(x, refs, depth + 1) for x in value]}
    if kind is dict or kind in _dict_kinds():
        tag = "d" if kind is dict else _dict_kinds()[kind]
        return {tag: [[encode(k, refs, depth + 1), encode(v, refs, depth + 1)] for k, v in value.items()]}
    if kind is _deque():
        return {"dq": [encode(x, refs, depth + 1) for x in value]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real.hex(), value.imag.hex()]}
    if kind is Fraction:
        return {"q": [hex(value.numerator), hex(value.denominator)]}
    if kind is Decimal:
        return {"D": str(value)}
    refs.append(value)
    return {"r": len(refs) - 1}


def _dict_kinds():
    """The standard library's dict subclasses, sent by value under their own tag (their equality
    is the standard library's; a subclass the program defines is a handle like any object)."""
    import collections

    return {collections.Counter: "C", collections.OrderedDict: "O", collections.defaultdict: "dd"}


def _deque():
    import collections

    return collections.deque


def decode(data, handle, depth=0):
    """The value :func:`encode` described; ``handle(n)`` makes what stands for handle ``n``."""
    from decimal import Decimal
    from fractions import Fraction

    if data is None or type(data) in (bool, str, int):
        return data
    if type(data) is not dict or len(data) != 1 or depth > MAX_DEPTH + 1:
        raise ValueError("malformed value")
    (tag, inner), = data.items()
    if tag == "i":
        return int(inner, 16)
    if tag == "f":
        return float.fromhex(inner)
    if tag in ("l", "t", "s", "z"):
        items = [decode(x, handle, depth + 1) for x in inner]
        return {"l": list, "t": tuple, "s": set, "z": frozenset}[tag](items)
    if tag in ("d", "C", "O", "dd"):
        pairs = {decode(k, handle, depth + 1): decode(v, handle, depth + 1) for k, v in inner}
        if tag == "d":
            return pairs
        kind = {v: k for k, v in _dict_kinds().items()}[tag]
        return kind(None, pairs) if tag == "dd" else kind(pairs)
    if tag == "dq":
        return _deque()(decode(x, handle, depth + 1) for x in inner)
    if tag == "b":
        return bytes.fromhex(inner)
    if tag == "c":
        return complex(float.fromhex(inner[0]), float.fromhex(inner[1]))
    if tag == "q":
        return Fraction(int(inner[0], 16), int(inner[1], 16))
    if tag == "D":
        return Decimal(inner)
    if tag == "r" and type(inner) is int:
        return handle(inner)
    raise ValueError("malformed value")


def send(write, fd, message):
    import json

    blob = json.dumps(message).encode()
    if len(blob) > MAX_MESSAGE:
        blob = json.dumps({"exc": ["MemoryError", "the value is too large to return from the sandbox"]}).encode()
    blob = len(blob).to_bytes(8, "little") + blob
    view = memoryview(blob)
    while view:
        view = view[write(fd, view):]


def receive(read, fd):
    """One message, or None at end of stream (the other side is gone)."""
    import json

    def exact(count):
        chunks, got = [], 0
        while got < count:
            chunk = read(fd, min(1 << 20, count - got))
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    head = exact(8)
    if head is None:
        return None
    size = int.from_bytes(head, "little")
    if size > MAX_MESSAGE:
        raise ValueError("message too large")
    blob = exact(size)
    return None if blob is None else json.loads(blob)


def read_job(read, fd):
    import json

    header = b""
    while not header.endswith(b"\n"):
        byte = read(fd, 1)
        if not byte or len(header) > 20:
            raise EOFError("bad payload header")
        header += byte
    size, chunks = int(header), []
    while size:
        chunk = read(fd, min(1 << 16, size))
        if not chunk:
            raise EOFError("payload truncated")
        chunks.append(chunk)
        size -= len(chunk)
    return json.loads(b"".join(chunks))


# ------------------------------------------------------------------ worker (untrusted program)


def worker():  # pragma: no cover - runs only inside the sandboxed interpreter
    """Lock the process down, run the program, then serve the judge's requests until it hangs up."""
    import builtins
    import json
    import os
    import resource
    import signal
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
    features = []

    def fail_setup(message):
        with_newline = ("setup-failed " + message).replace("\n", " ") + "\n"
        try:
            _write(result_fd, with_newline.encode("utf-8", "replace"))
        finally:
            _exit(3)

    try:
        job = read_job(_read, payload_fd)
    except Exception as err:
        fail_setup(f"could not read the job: {err!r}")
    limits = job["limits"]
    workdir = job["workdir"]
    uid = job["uid"]

    libc = None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        libc.unshare.argtypes = [ctypes.c_int]
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    except Exception:
        libc = None

    PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
    CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
    MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
    MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24

    def prctl(option, value):
        return libc is not None and libc.prctl(option, value, 0, 0, 0) == 0

    def mount(source, target, fstype, flags, data):
        def enc(text):
            return None if text is None else os.fsencode(text)

        if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), target)

    # Die with the parent (the pytest/trainer thread that spawned us), and never dump core.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != job["ppid"]:
        _exit(3)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    pid_ns = False
    if uid is not None and libc is not None:
        if libc.unshare(CLONE_NEWNET) == 0:
            features.append("netns")  # a fresh network namespace: no interface is even up
        if libc.unshare(CLONE_NEWNS) == 0:
            try:
                mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing propagates to the host
                features.append("mountns")
            except OSError:
                pass
        if "mountns" in features:
            try:
                with open("/proc/self/mountinfo", "rb") as fh:
                    mounts = fh.read().decode("utf-8", "replace").splitlines()
                mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      f"size={limits['disk_mb']}m,nr_inodes=10000,mode=0700,uid={uid},gid={uid}")
                features.append("tmpfs_workdir")
            except OSError:
                mounts = []
            keep = {"nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                    "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
            root_ro = False
            for line in mounts:  # every host mount becomes read-only in this namespace
                fields = line.split()
                if len(fields) < 6:
                    continue
                point = fields[4]
                for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                    point = point.replace(code, char)
                if point in ("/dev", "/dev/pts", workdir) or point.startswith(("/proc", "/sys")):
                    continue
                flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
                for option in fields[5].split(","):
                    flags |= keep.get(option, 0)
                try:
                    mount(None, point, None, flags, None)
                    root_ro = root_ro or point == "/"
                except OSError:
                    pass
            if root_ro:
                features.append("readonly_fs")
            hidden = 0
            for path in job.get("hide", []):  # answers out of reach: empty, read-only mounts on top
                try:
                    mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
                    hidden += 1
                except OSError:
                    pass
            if job.get("hide") and hidden == len(job["hide"]):
                features.append("hidden_paths")
            os.chdir(workdir)
        if libc.unshare(CLONE_NEWPID) == 0:
            pid_ns = True

    if pid_ns:
        # The first child becomes pid 1 of the new namespace: when it dies, the kernel kills every
        # process it left behind. This (root) process only waits and relays the exit status.
        child = os.fork()
        if child != 0:
            for fd in (payload_fd, result_fd, request_fd, reply_fd):
                _close(fd)
            while True:
                try:
                    _, status = os.waitpid(child, 0)
                    break
                except InterruptedError:
                    continue
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                try:
                    if sig not in (signal.SIGKILL, signal.SIGSTOP):
                        signal.signal(sig, signal.SIG_DFL)
                    os.kill(os.getpid(), sig)  # die the same way, so the parent sees the signal
                finally:
                    _exit(128 + sig)
            _exit(os.waitstatus_to_exitcode(status))
        features.append("pidns")
        if "mountns" in features:
            try:
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
                features.append("procfs")
            except OSError:
                pass

    private_fds = {payload_fd, result_fd, request_fd, reply_fd}
    if uid is not None:
        # Keep handles on the interpreter's import directories: the throwaway uid may not be able
        # to traverse their parents (e.g. /root/.pyenv), but /proc/self/fd/N still reaches them.
        path_fds = {}
        for entry in list(sys.path):
            if isinstance(entry, str) and entry and os.path.isdir(entry):
                try:
                    path_fds[entry] = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
                except OSError:
                    pass
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError as err:
            fail_setup(f"could not drop privileges to uid {uid}: {err}")
        if os.getuid() != uid or os.geteuid() != uid:
            fail_setup("privileges were not dropped")
        features.append("uid")
        moved = {}
        for entry, fd in path_fds.items():
            if os.access(entry, os.R_OK | os.X_OK):
                _close(fd)
            else:
                moved[entry] = f"/proc/self/fd/{fd}"
                private_fds.add(fd)

        def relocate(path):
            for old, new in moved.items():
                if path == old or path.startswith(old + "/"):
                    return new + path[len(old):]
            return path

        if moved:
            sys.path[:] = [relocate(p) if isinstance(p, str) else p for p in sys.path]
            for module in list(sys.modules.values()):
                package_path = getattr(module, "__path__", None)
                if isinstance(package_path, list):
                    package_path[:] = [relocate(p) if isinstance(p, str) else p for p in package_path]
            sys.path_importer_cache.clear()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change; parent is the relay
    if prctl(PR_SET_NO_NEW_PRIVS, 1):
        features.append("no_new_privs")

    try:
        mib = 1024 * 1024
        for which, value in (
            (resource.RLIMIT_CPU, limits["cpu_seconds"]),
            (resource.RLIMIT_AS, limits["memory_mb"] * mib),
            (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mib),
            (resource.RLIMIT_NPROC, limits["max_processes"]),
            (resource.RLIMIT_NOFILE, 256),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(which, (value, value))  # hard == soft: cannot be raised back
        features.append("rlimits")
    except (OSError, ValueError) as err:
        fail_setup(f"could not set rlimits: {err}")

    # ---- Python-level guard (best effort; the kernel layers above are the real boundary) ----
    import _io
    import _posixsubprocess
    import _socket
    import io
    import posix
    import shutil
    import socket
    import subprocess

    realpath, fspath, fsdecode = os.path.realpath, os.fspath, os.fsdecode
    home = realpath(os.getcwd())
    try:
        own_proc = os.readlink("/proc/self")
    except OSError:
        own_proc = _str(os.getpid())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def resolve(path):
        path = fspath(path)
        if isinstance(path, bytes):
            path = fsdecode(path)
        return realpath(path)

    def writable(path):
        if isinstance(path, int):
            return True  # an already open descriptor
        try:
            real = resolve(path)
        except (TypeError, ValueError, OSError):
            return False
        return real == home or real.startswith(home + "/") or real == "/dev/null"

    def readable(path):
        if isinstance(path, int):
            return True
        try:
            parts = resolve(path).split("/")
        except (TypeError, ValueError, OSError):
            return True  # let the real call raise its own error
        return not (len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != own_proc)

    def denied(name, why=None):
        message = f"{name}: {why}" if why else f"{name} is disabled in the sandbox"

        def blocked(*args, **kwargs):
            raise PermissionError(message)

        blocked.__name__ = name.rpartition(".")[2]
        return blocked

    def path_checked(name, original, positions):
        def guarded(*args, **kwargs):
            for key in ("dir_fd", "src_dir_fd", "dst_dir_fd"):
                if kwargs.get(key) is not None:
                    raise PermissionError(f"{name} with {key} is disabled in the sandbox")
            paths = [args[i] for i in positions if i < len(args)]
            paths += [kwargs[k] for k in ("path", "src", "dst", "name") if k in kwargs]
            for path in paths:
                if not writable(path):
                    raise PermissionError(f"{name}({path!r}) outside the sandbox directory is disabled")
            return original(*args, **kwargs)

        guarded.__name__ = original.__name__
        return guarded

    # The bootstrap's own descriptors (job/token pipe, result pipe, import dirs) stay out of reach
    # of plain os calls: a program that closes every fd still gets its verdict delivered.
    def fd_checked(name, original):
        def guarded(fd, *args, **kwargs):
            if fd in private_fds:
                raise PermissionError(f"os.{name}({fd}) on a sandbox descriptor is disabled")
            return original(fd, *args, **kwargs)

        guarded.__name__ = original.__name__
        return guarded

    for name in ("read", "readv", "pread", "write", "writev", "pwrite", "close", "dup", "fstat",
                 "set_blocking", "set_inheritable", "lseek", "ftruncate", "fchmod", "fchown", "fdopen",
                 "sendfile", "splice", "fsync"):
        for target in (os, posix):
            original = getattr(target, name, None)
            if original is not None:
                setattr(target, name, fd_checked(name, original))
    original_dup2, original_closerange = posix.dup2, posix.closerange

    def guarded_dup2(fd, fd2, *args, **kwargs):
        if fd in private_fds or fd2 in private_fds:
            raise PermissionError("os.dup2 on a sandbox descriptor is disabled")
        return original_dup2(fd, fd2, *args, **kwargs)

    def guarded_closerange(low, high):
        for fd in sorted(private_fds):
            if low <= fd < high:
                original_closerange(low, fd)
                low = fd + 1
        if low < high:
            original_closerange(low, high)

    for target in (os, posix):
        target.dup2, target.closerange = guarded_dup2, guarded_closerange
    fcntl_module = sys.modules.get("fcntl")
    if fcntl_module is None:
        import fcntl as fcntl_module
    for name in ("fcntl", "ioctl", "flock", "lockf"):
        original = getattr(fcntl_module, name, None)
        if original is not None:
            setattr(fcntl_module, name, fd_checked(f"fcntl.{name}", original))

    original_open = _io.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, int) and file in private_fds:
            raise PermissionError(f"opening sandbox descriptor {file} is disabled")
        if isinstance(mode, _str) and any(c in mode for c in "wax+") and not writable(file):
            raise PermissionError(f"writing {file!r} outside the sandbox directory is disabled")
        if not readable(file):
            raise PermissionError(f"reading {file!r} is disabled in the sandbox")
        return original_open(file, mode, *args, **kwargs)

    original_os_open = posix.open

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags and (dir_fd is not None or not writable(path)):
            raise PermissionError(f"writing {path!r} outside the sandbox directory is disabled")
        if not readable(path):
            raise PermissionError(f"reading {path!r} is disabled in the sandbox")
        return original_os_open(path, flags, mode, dir_fd=dir_fd)

    for target in (builtins, io, _io):
        target.open = guarded_open
    for target in (os, posix):
        target.open = guarded_os_open

    class GuardedFileIO(_io.FileIO):
        """``FileIO`` under the same rules as ``open`` (it opens paths and descriptors directly)."""

        def __init__(self, file, mode="r", closefd=True, opener=None):
            if isinstance(file, int) and file in private_fds:
                raise PermissionError(f"opening sandbox descriptor {file} is disabled")
            if isinstance(mode, _str) and any(c in mode for c in "wax+") and not writable(file):
                raise PermissionError(f"writing {file!r} outside the sandbox directory is disabled")
            if not readable(file):
                raise PermissionError(f"reading {file!r} is disabled in the sandbox")
            super().__init__(file, mode, closefd, opener)

    for target in (io, _io):
        target.FileIO = GuardedFileIO
    original_open_code = _io.open_code

    def guarded_open_code(path):
        if not readable(path):
            raise PermissionError(f"reading {path!r} is disabled in the sandbox")
        return original_open_code(path)

    for target in (io, _io):
        target.open_code = guarded_open_code

    blocked_calls = (
        "system popen fork forkpty vfork kill killpg tgkill pidfd_open execv execve execl execle execlp "
        "execlpe execvp execvpe spawnv spawnve spawnvp spawnvpe spawnl spawnle spawnlp spawnlpe "
        "posix_spawn posix_spawnp setuid setgid seteuid setegid setreuid setregid setresuid setresgid "
        "setgroups setsid setpgid setpgrp chroot"
    ).split()
    for name in blocked_calls:
        for target in (os, posix):
            if hasattr(target, name):
                setattr(target, name, denied(f"os.{name}"))
    single_path = "remove unlink rmdir removedirs chmod lchmod chown lchown truncate mkfifo mknod utime mkdir makedirs setxattr removexattr chflags lchflags"
    for name in single_path.split():
        for target in (os, posix):
            original = getattr(target, name, None)
            if original is not None:
                setattr(target, name, path_checked(f"os.{name}", original, (0,)))
    for name, positions in (("rename", (0, 1)), ("renames", (0, 1)), ("replace", (0, 1)), ("link", (0, 1)), ("symlink", (1,))):
        for target in (os, posix):
            original = getattr(target, name, None)
            if original is not None:
                setattr(target, name, path_checked(f"os.{name}", original, positions))

    def guarded_rmtree(path, *args, **kwargs):
        if not writable(path):
            raise PermissionError(f"shutil.rmtree({path!r}) outside the sandbox directory is disabled")
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                full = os.path.join(root, name)
                (os.unlink if os.path.islink(full) else os.rmdir)(full)
        os.rmdir(path)

    shutil.rmtree = guarded_rmtree
    shutil.move = path_checked("shutil.move", shutil.move, (0, 1))
    subprocess.Popen = denied("subprocess.Popen")
    _posixsubprocess.fork_exec = denied("_posixsubprocess.fork_exec")

    network_off = "network access is disabled in the sandbox"

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise PermissionError(network_off)

    class NoRawSocket(_socket.socket):
        def __init__(self, *args, **kwargs):
            raise PermissionError(network_off)

    socket.socket = socket.SocketType = NoSocket
    _socket.socket = _socket.SocketType = NoRawSocket
    for name in ("socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo",
                 "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "fromshare"):
        for target in (socket, _socket):
            if hasattr(target, name):
                setattr(target, name, denied(f"socket.{name}", network_off))
    for name in ("ctypes", "_ctypes", "cffi", "_cffi_backend"):
        sys.modules[name] = None  # `import ctypes` now raises ImportError
    features.append("guard")

    # ---- Program, then requests ----
    program = job["program"]
    del job
    refs = []
    module = types.ModuleType("solution")
    namespace = module.__dict__
    namespace["__builtins__"] = builtins
    sys.modules["solution"] = module
    _send, _receive, _encode, _decode = send, receive, encode, decode
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
        reply({"error": "the program does not compile: " + ": ".join(failure(err))
               + (f" at line {err.lineno}" if _isinstance(err, SyntaxError) and err.lineno else "")})
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


class _WorkerGone(BaseException):
    """The worker died or hung up: the check cannot pass (not catchable by a test's ``except Exception``)."""


class _WorkerExit(BaseException):
    """The program called exit() during a test."""


def _free_names(tests):
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


def judge():  # pragma: no cover - runs only inside the judge interpreter
    """Run the tests against stand-ins for the program's names; write the verdict for the parent."""
    import builtins
    import importlib
    import json
    import os
    import resource
    import signal

    payload_fd, verdict_fd, request_fd, reply_fd = (int(x) for x in sys.argv[2:6])
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
        job = read_job(os.read, payload_fd)
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
            return rpc({"op": "call", "ref": self._ref, "args": [encode_arg(a) for a in args],
                        "kwargs": {k: encode_arg(v) for k, v in kwargs.items()}}, args)

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

    exceptions = {name: obj for name, obj in vars(builtins).items()
                  if isinstance(obj, type) and issubclass(obj, Exception)}

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
    wanted = _free_names(tests)
    ready = first.get("ready") if type(first.get("ready")) is dict else {}
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
                namespace[name] = decode(data, Remote)  # a plain value, or a handle on a program object
        except Exception:
            continue

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


if __name__ == "__main__":
    {"worker": worker, "judge": judge}[sys.argv[1]]()
