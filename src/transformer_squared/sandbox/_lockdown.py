"""The worker's kernel-level lock-down, run before any untrusted code (loaded by path by ``_child.py``).

When the parent is root (``job["uid"]`` is set): new network, mount and pid namespaces, every host
mount read-only, empty read-only mounts over site-packages / the checkout / the data caches, a
private tmpfs working directory, and a throwaway uid. Always: die with the parent, no core dumps,
no new privileges, rlimits with hard = soft. Each layer that took effect is added to ``features``.
"""


def lock_down(job, fds, features, fail_setup, _exit, _close):  # pragma: no cover - sandboxed interpreter only
    """Apply every layer; returns the set of descriptors the program must never touch.

    In the pid-namespace case the calling process becomes a relay that waits for its child and
    exits the same way; only the child returns from here. ``fail_setup(message)`` never returns.
    """
    import os
    import resource
    import signal
    import sys

    payload_fd, result_fd, request_fd, reply_fd = fds
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
                mount(
                    "tmpfs",
                    workdir,
                    "tmpfs",
                    MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    f"size={limits['disk_mb']}m,nr_inodes=10000,mode=0700,uid={uid},gid={uid}",
                )
                features.append("tmpfs_workdir")
            except OSError:
                mounts = []
            keep = {
                "nodev": MS_NODEV,
                "noexec": MS_NOEXEC,
                "noatime": MS_NOATIME,
                "nodiratime": MS_NODIRATIME,
                "relatime": MS_RELATIME,
                "strictatime": MS_STRICTATIME,
            }
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
                    return new + path[len(old) :]
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
    return private_fds
