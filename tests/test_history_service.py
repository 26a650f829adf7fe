"""runtime.history.HistoryService: one thread, jobs in order once ready, cancelled ones dropped, idle exit."""

from __future__ import annotations

import threading
import time

from kiteohlc_lab.runtime.history import HistoryService


def wait_until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_jobs_run_in_order_on_one_thread_once_ready_and_cancelled_ones_are_dropped():
    svc = HistoryService(poll=0.02, idle_exit=0.2)
    ran, threads = [], set()
    gate = threading.Event()

    def job(name):
        def run():
            ran.append(name)
            threads.add(threading.current_thread().name)
        return run

    svc.submit(job("later"), ready=gate.is_set)
    svc.submit(job("a"))
    svc.submit(job("never"), cancelled=lambda: True)
    svc.submit(job("b"))
    assert wait_until(lambda: ran == ["a", "b"])
    gate.set()
    assert wait_until(lambda: ran == ["a", "b", "later"])
    assert threads == {"kiteohlc-history"}
    assert wait_until(lambda: svc.status() == {"waiting": 0, "ran": 3, "dropped": 1, "running": False})


def test_a_failing_job_does_not_stop_the_next_and_stop_drops_what_waits():
    svc = HistoryService(poll=0.02, idle_exit=5.0)
    ran = []
    svc.submit(lambda: 1 / 0)
    svc.submit(lambda: ran.append("after"))
    svc.submit(lambda: ran.append("never"), ready=lambda: False)
    assert wait_until(lambda: ran == ["after"])
    svc.stop()
    assert svc.status() == {"waiting": 0, "ran": 2, "dropped": 1, "running": False}
    svc.submit(lambda: ran.append("again"))  # a job after stop starts the thread again
    assert wait_until(lambda: ran == ["after", "again"])
    svc.stop()
