"""Logging as JSON lines: one object per record, with the `extra` fields a call passed.

`JSONLines` is the one handler (`configure_logging` installs it on the root logger, for the
relay, uvicorn and alembic alike). Lines logged on an event loop wait for the end of the loop's
round and go out together in one write; lines from anywhere else are written at once, after any
that wait. So a busy process writes its access lines a round's worth at a time rather than one
system call each, and a line is never held past the round that logged it (nor past
`logging.shutdown` at exit).

The access line of every request takes a shorter way (`write_fields`): its fields go straight
to the handler, without a `LogRecord`, when that handler alone would write it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Final, TextIO

import msgspec

__all__ = ["JSONFormatter", "JSONLines", "configure_logging", "write_fields"]

_STANDARD: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}
_PLAIN: Final = frozenset({str, int, float, bool, type(None)})
_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)
_HOLD_AT_MOST: Final = 64 * 1024  # characters waiting for the round's end, then written at once


class _Clock:
    """ISO 8601 UTC times to the millisecond, the date and second formatted once a second."""

    def __init__(self) -> None:
        self._cached = (-1, "")  # one tuple: a thread never sees one half of another's update

    def format(self, at: float) -> str:
        second = int(at)
        cached, prefix = self._cached
        if second != cached:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        return f"{prefix}.{int((at - second) * 1000):03d}Z"


_CLOCK: Final = _Clock()


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _CLOCK.format(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            # Written as `str` unless plainly JSON: bytes, say, as their repr, never base64 (a
            # secret in a line must stay findable by the canary tests).
            entry.update(
                (k, v if type(v) in _PLAIN else str(v))
                for k, v in vars(record).items()
                if k not in _STANDARD
            )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry).decode()


class JSONLines(logging.Handler):
    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.setFormatter(JSONFormatter())
        self._waiting: list[str] = []
        self._held = 0
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop that will write them

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line)

    def write_entry(self, logger: str, level: str, message: str, fields: Mapping[str, Any]) -> None:
        line = _ENCODER.encode(
            {
                "time": _CLOCK.format(time.time()),
                "level": level,
                "logger": logger,
                "message": message,
                **fields,
            }
        ).decode()
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._add(line)

    def _add(self, line: str) -> None:
        """Under the handler's lock."""
        self._waiting.append(line)
        self._held += len(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self._held > _HOLD_AT_MOST:
            self._write()
        elif self._flush_on is None:
            self._flush_on = loop
            loop.call_soon(self.flush)
        elif self._flush_on is not loop:  # another thread's loop (tests run servers in threads)
            self._write()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _write(self) -> None:
        self._flush_on = None
        if not self._waiting:
            return
        lines, self._waiting, self._held = self._waiting, [], 0
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: nothing else to tell
            pass


def write_fields(logger: logging.Logger, message: str, fields: Mapping[str, Any]) -> None:
    """Log `message` with `fields` at `info`: straight to the JSON-lines handler when it alone
    would write it (no handler or filter on the way, as `configure_logging` leaves the loggers),
    else as any record."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _ONLY
    if handler is not None and _alone(logger, handler):
        handler.write_entry(logger.name, "info", message, fields)
    else:
        logger.info(message, extra={"fields": fields})


def _alone(logger: logging.Logger, handler: JSONLines) -> bool:
    node: logging.Logger | None = logger
    while node is not None and not node.handlers:
        if node.filters or not node.propagate:
            return False
        node = node.parent
    return (
        node is not None
        and node.handlers == [handler]
        and not node.filters
        and not handler.filters
        and handler.level <= logging.INFO
    )


_ONLY: JSONLines | None = None


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the relay, uvicorn and alembic alike."""
    global _ONLY
    # A line says none of where it was logged from, nor the thread or process: not asking
    # spares every record a walk up the stack (the logging docs' own advice for speed).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = JSONLines(sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    _ONLY = handler
