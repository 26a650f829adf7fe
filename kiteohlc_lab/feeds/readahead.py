"""Reading ahead of a consumer on a thread of its own (a tape's next blocks while this one is
aggregated), and the allocator setting a replay's many same-sized temporaries want."""

from __future__ import annotations

from typing import Any, Iterator


class Ahead:
    """What ``prefetch`` returns: iterate it for the items; ``close()`` ends the producer (also
    when it was never iterated)."""

    def __init__(self, items: Iterator[Any], quit_: Any) -> None:
        self._items, self._quit = items, quit_

    def __iter__(self) -> Iterator[Any]:
        return self._items

    def close(self) -> None:
        self._quit.set()


class MappedPages:
    """The pages of a file mapping read front to back (a CSV tape's chunks, ``tapefile``):
    ``ahead`` asks for the bytes about to be read (``MADV_WILLNEED``: the kernel can read a whole
    chunk in large requests while the parser works on the one before, rather than as Arrow's
    threads fault its pages in; no change measured with the file in the host's cache, a slow disk's
    gain not measured), ``behind`` drops those read from the
    map (``MADV_DONTNEED``: they stay in the page cache; a tape's whole size would otherwise count
    in the process's resident memory). Where ``madvise`` is missing both do nothing."""

    def __init__(self, mm: Any) -> None:
        import mmap

        self._mm, self._page = mm, mmap.PAGESIZE
        self._ok = hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED")
        self._asked = self._dropped = 0
        if self._ok:
            mm.madvise(mmap.MADV_SEQUENTIAL)

    def ahead(self, at: int, upto: int) -> None:
        """Ask for the bytes from ``at`` (or from where the last ask ended) to ``upto``."""
        if not self._ok or upto <= self._asked:
            return
        import mmap

        start = max(self._asked, at)
        start -= start % self._page
        self._mm.madvise(mmap.MADV_WILLNEED, start, upto - start)
        self._asked = upto

    def behind(self, at: int) -> None:
        """Drop the whole pages before byte ``at`` from the map."""
        done = at - at % self._page
        if self._ok and done > self._dropped:
            import mmap

            self._mm.madvise(mmap.MADV_DONTNEED, self._dropped, done - self._dropped)
            self._dropped = done


def prefetch(items: Iterator[Any], depth: int = 3) -> Ahead:
    """``items`` produced on a thread of their own, started now, up to ``depth`` ahead of the
    consumer (Arrow parses the next chunks while this one is aggregated; one ahead left the
    aggregation waiting on every slower block: a 20M-tick replay 1.70 -> 1.07 s with three); the
    producer's exception is raised to the consumer."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    end, quit_ = object(), threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not quit_.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if quit_.is_set():
                    return
            q.put((end, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put((end, exc))

    def consume() -> Iterator[Any]:
        try:
            while True:
                item, exc = q.get()
                if exc is not None:
                    raise exc
                if item is end:
                    return
                yield item
        finally:
            quit_.set()

    threading.Thread(target=produce, name="kiteohlc-tape-read", daemon=True).start()
    return Ahead(consume(), quit_)


_MALLOC_TUNED = False


def tune_malloc() -> None:
    """Keep glibc from handing every freed numpy temporary (a 65k-tick chunk's arrays are ~0.5 MB,
    above its mmap threshold) back to the kernel and faulting it in again: a replay spent a fifth of
    its time in page faults. Once per process; elsewhere than glibc, nothing."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)  # arrays under 32 MB from the heap
        libc.mallopt(m_trim_threshold, 128 << 20)  # free memory kept up to 128 MB, not trimmed
        libc.mallopt(m_top_pad, 16 << 20)
    except (OSError, AttributeError):
        pass
