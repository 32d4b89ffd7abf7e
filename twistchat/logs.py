"""
Machine-readable logs: one JSON object per log event, for a log pipeline.

Use it as twistd's logger, which calls a zero-argument factory::

    twistd -n --logger twistchat.logs.json_observer socketchat ...

Each record is an RFC 7464 JSON text sequence record: the record separator
C{\\x1e}, one JSON object, a line feed (as Twisted's C{jsonFileLogObserver}
writes them). Every record has the same keys, C{null} when an event has no
such field, so a pipeline can filter on them:

  - C{time} (seconds since the epoch), C{level} (debug, info, warn, error,
    critical), C{namespace} (the logger's, e.g.
    C{twistchat.server.protocol.ChatServerProtocol});
  - C{event}: the event's stable name when it has one (e.g.
    C{twistchat.error_sent}), else C{null};
  - C{format}: the message template, without its values (stable across
    events of one kind; usable as a name for events without C{event});
  - C{text}: the formatted message;
  - C{room}, C{code}, C{peer}, C{name}, C{host}: those fields of the event;
  - C{failure}: the traceback, for an event that logged one.

The server's log events never hold a password, a key or a message text, so
neither do these records (member names, room names and addresses are in
them, as they are in the text log).
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer

#: The event fields copied as they are (a missing one is null).
FIELDS = ("room", "code", "peer", "name", "host")
#: RFC 7464's record separator, written before each record.
RECORD_SEPARATOR = "\x1e"


def _plain(value: Any) -> Any:
    """
    C{value} as JSON can hold it: strings, numbers, booleans and null as
    they are, anything else as its text.
    """
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def record(event: LogEvent) -> dict[str, Any]:
    """
    The JSON object written for C{event}.
    """
    level = event.get("log_level")
    failure = event.get("log_failure")
    out: dict[str, Any] = {
        "time": event.get("log_time"),
        "level": getattr(level, "name", None),
        "namespace": _plain(event.get("log_namespace")),
        "event": _plain(event.get("event")),
        "format": _plain(event.get("log_format")),
        "text": formatEvent(event),
    }
    for key in FIELDS:
        out[key] = _plain(event.get(key))
    out["failure"] = None if failure is None else failure.getTraceback()
    return out


@implementer(ILogObserver)
class JSONObserver:
    """
    Write each event to C{out} as one RFC 7464 record (see the module).
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: LogEvent) -> None:
        text = json.dumps(record(event), ensure_ascii=False, separators=(",", ":"))
        self.out.write(f"{RECORD_SEPARATOR}{text}\n")
        self.out.flush()


def json_observer() -> JSONObserver:
    """
    An observer writing JSON records to the process's standard output, as
    it is when twistd calls this (before it sends C{sys.stdout} to the log).
    """
    return JSONObserver(sys.stdout)


__all__ = ["FIELDS", "JSONObserver", "RECORD_SEPARATOR", "json_observer", "record"]
