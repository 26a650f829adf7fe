"""streaminfo.StreamHandle: an own Stream and an AttachedStream both have every member of the protocol,
so the runtime, the leases and the collector never ask a stream what shape it has."""

from __future__ import annotations

import inspect
import types

from kiteohlc_lab.attach import AttachedStream
from kiteohlc_lab.core.engine import Engine
from kiteohlc_lab.core.events import Bus
from kiteohlc_lab.core.stream import Stream
from kiteohlc_lab.streaminfo import StreamHandle


class Src:
    name, live = "tape", False

    def start(self, sink):
        pass

    def subscribe(self, tokens):
        pass

    def stop(self):
        pass

    def status(self):
        return {}


class Quiet:
    def on_closed(self, s, b):
        pass

    def on_forming(self, s, b):
        pass

    def on_gap(self, *a):
        pass

    def on_error(self, s, m):
        pass


def members() -> set[str]:
    names = set(StreamHandle.__annotations__)
    names |= {n for n, v in vars(StreamHandle).items()
              if not n.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))}
    return names


def test_own_and_attached_streams_implement_the_whole_protocol():
    own = Stream("own", Src(), Engine(["1m"]), [1], listener=Quiet())
    live = types.SimpleNamespace(client=None, prefix="t:")
    att = AttachedStream("att", live, [1], ["1m", "5m"], listener=Quiet())
    assert {"name", "attached", "tokens", "timeframes", "state", "stop", "subscribe", "status",
            "forming", "call", "written_tokens", "events"} <= members()
    for s in (own, att):
        missing = sorted(n for n in members() if not hasattr(s, n))
        assert not missing, f"{type(s).__name__} lacks {missing}"
        assert isinstance(s.events, Bus)
    assert (own.attached, att.attached) == (False, True)
    assert (own.source_name, att.source_name) == ("tape", "redis")
    assert (own.realtime, att.realtime) == (False, True)
    assert [t.label for t in att.timeframes] == ["1m", "5m"] and [t.label for t in own.timeframes] == ["1m"]
    assert own.written_tokens() == [1] and att.written_tokens() == []
    assert len(att.forming("1m")) == 0 and len(own.forming("1m")) == 0
    assert att.call(lambda: 7) == 7 and own.call(lambda: 8) == 8  # not started: inline
    att.unsubscribe([1])
    assert att.tokens == []


def test_status_names_the_symbols_of_the_instruments_followed_now():
    """A stream's status lists its instruments' symbols (token order); after subscribe and
    unsubscribe the next status names exactly the instruments then followed (the list is kept
    between calls, so a change must be seen), and a caller's copy does not change the next one."""
    own = Stream("own", Src(), Engine(["1m"]), [1, 2], listener=Quiet(), symbols={1: "NIFTY", 2: "INFY"})
    assert own.status()["symbols"] == ["NIFTY", "INFY"]
    own.status()["symbols"].append("MUTATED")
    assert own.status()["symbols"] == ["NIFTY", "INFY"]
    own.subscribe([3], {3: "TCS"})  # not started: inline
    assert own.status()["symbols"] == ["NIFTY", "INFY", "TCS"]
    own.unsubscribe([1])
    assert own.status()["symbols"] == ["INFY", "TCS"]
    own.unsubscribe([2])
    own.subscribe([4], {4: "SBIN"})  # as many instruments as before, other ones
    assert own.status()["symbols"] == ["TCS", "SBIN"]
    own.subscribe([3], {3: "TCS-EQ"})  # followed already, named anew: the same count
    assert own.status()["symbols"] == ["TCS-EQ", "SBIN"]
