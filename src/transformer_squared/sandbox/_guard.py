"""The worker's Python-level guard (loaded by path by ``_child.py``): best effort on top of the kernel.

Patched in place in the worker's interpreter before the program runs: no writes, deletes or
renames outside the working directory, no reads of other processes' /proc entries, no
subprocesses, signals or uid changes, no sockets, no ctypes/cffi, and the sandbox's own
descriptors (the job and result pipes, import folders) out of reach of plain os calls.
The kernel layers (``_lockdown.py``) are the real boundary; the verdict is the judge's.
"""


def install_guard(private_fds, features):  # pragma: no cover - sandboxed interpreter only
    """Patch ``os``/``posix``/``io``/``shutil``/``subprocess``/``socket``/``fcntl``; adds "guard" to ``features``."""
    import builtins
    import os
    import sys

    _str = str
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

    for name in (
        "read",
        "readv",
        "pread",
        "write",
        "writev",
        "pwrite",
        "close",
        "dup",
        "fstat",
        "set_blocking",
        "set_inheritable",
        "lseek",
        "ftruncate",
        "fchmod",
        "fchown",
        "fdopen",
        "sendfile",
        "splice",
        "fsync",
    ):
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
    for name, positions in (
        ("rename", (0, 1)),
        ("renames", (0, 1)),
        ("replace", (0, 1)),
        ("link", (0, 1)),
        ("symlink", (1,)),
    ):
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
    for name in (
        "socketpair",
        "fromfd",
        "create_connection",
        "create_server",
        "getaddrinfo",
        "gethostbyname",
        "gethostbyname_ex",
        "gethostbyaddr",
        "getnameinfo",
        "fromshare",
    ):
        for target in (socket, _socket):
            if hasattr(target, name):
                setattr(target, name, denied(f"socket.{name}", network_off))
    for name in ("ctypes", "_ctypes", "cffi", "_cffi_backend"):
        sys.modules[name] = None  # `import ctypes` now raises ImportError
    features.append("guard")
