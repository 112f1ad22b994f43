"""Logging as JSON lines: one object per record, with the `extra` fields a call passed.

A call on a hot path (the access line of every request) passes its fields as one mapping,
`extra={"fields": {...}}`, which the line takes as they are rather than by sifting the record's
attributes; msgspec encodes the line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final

import msgspec

__all__ = ["JSONFormatter", "configure_logging"]

_STANDARD: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


_PLAIN: Final = frozenset({str, int, float, bool, type(None)})
_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
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


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the relay, uvicorn and alembic alike."""
    # A line says none of where it was logged from, nor the thread or process: not asking
    # spares every record a walk up the stack (the logging docs' own advice for speed).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "alembic"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
