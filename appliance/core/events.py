"""Structured logging for the long-running commands: one line per event, stable event names, bound context.

Why: operators grep and alert on event names (`reconcile.pass`, `eip.announced`, `kernel.apply_failed`), so the
name is the stable part of a line and everything variable goes into fields. Two renderings of the same record:
`json` (one object per line, for log shippers) and `kv` (`key=value`, for humans and journald). Both go to stderr,
so a process started inside a lab namespace logs to the terminal or file that started it.

Usage:
    log = EventLogger(logging.getLogger("egressgw.gateway"), node="gw1")
    log.info("eip.announced", eip="203.0.113.130", med=100)
    log.bind(peer="198.51.100.1").warning("bgp.peer_down", reason="hold timer expired")

Plain `logging` calls from other modules are rendered too: their message becomes the `msg` field and the event
name is `log` (the logger name is always present).
"""

from __future__ import annotations

import enum
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO


class LogFormat(enum.StrEnum):
    #: one JSON object per line (log shippers)
    JSON = "json"
    #: `ts=... level=info event=reconcile.pass key=value` (humans, journald)
    KV = "kv"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.KV


_EVENT_ATTR = "egressgw_event"
_FIELDS_ATTR = "egressgw_fields"


def _plain(value: object) -> object:
    """JSON-safe rendering of a field value (addresses, enums, paths and sets become strings/lists)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def error_text(exc: BaseException) -> str:
    """An exception as a field value, `Type: message`: the same rendering as the `error` field of `exception()`,
    so a handled error and a logged traceback read alike."""
    return f"{type(exc).__name__}: {exc}"


def _fields(record: logging.LogRecord) -> tuple[str, dict[str, object]]:
    event = getattr(record, _EVENT_ATTR, None)
    fields: dict[str, object] = dict(getattr(record, _FIELDS_ATTR, {}) or {})
    if event is None:
        event = "log"
        fields["msg"] = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        fields["error"] = error_text(record.exc_info[1])
    return str(event), fields


def _ts(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event, fields = _fields(record)
        out: dict[str, object] = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
        }
        for k, v in fields.items():
            out[k if k not in out else f"field.{k}"] = _plain(v)
        return json.dumps(out, separators=(",", ":"))


def _kv_value(value: object) -> str:
    plain = _plain(value)
    text = plain if isinstance(plain, str) else json.dumps(plain, separators=(",", ":"))
    if text == "" or any(c in text for c in ' ="\n\t'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event, fields = _fields(record)
        parts = [f"ts={_ts(record)}", f"level={record.levelname.lower()}", f"logger={record.name}", f"event={event}"]
        parts += [f"{k}={_kv_value(v)}" for k, v in fields.items()]
        return " ".join(parts)


_LEVELS = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}


def setup_logging(settings: LogSettings | None = None, *, stream: TextIO | None = None) -> logging.Handler:
    """Route every logger to one stderr handler with the configured rendering; returns the handler (for tests)."""
    settings = settings or LogSettings()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format is LogFormat.JSON else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[settings.level])
    # chatty libraries: their debug output drowns ours
    for noisy in ("kubernetes", "urllib3", "pyroute2"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, _LEVELS[settings.level]))
    return handler


class EventLogger:
    """A logger that emits named events with fields, plus context bound once (node, role, peer...)."""

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger | str, **context: object) -> None:
        self._logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self._context = context

    def bind(self, **context: object) -> EventLogger:
        return EventLogger(self._logger, **{**self._context, **context})

    def log(self, level: int, event: str, /, *, exc_info: bool = False, **fields: Any) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(
                level,
                event,
                exc_info=exc_info,
                extra={_EVENT_ATTR: event, _FIELDS_ATTR: {**self._context, **fields}},
                stacklevel=2,
            )

    def debug(self, event: str, /, **fields: Any) -> None:
        self.log(logging.DEBUG, event, **fields)

    def info(self, event: str, /, **fields: Any) -> None:
        self.log(logging.INFO, event, **fields)

    def warning(self, event: str, /, **fields: Any) -> None:
        self.log(logging.WARNING, event, **fields)

    def error(self, event: str, /, **fields: Any) -> None:
        self.log(logging.ERROR, event, **fields)

    def exception(self, event: str, /, **fields: Any) -> None:
        """An error with the current exception's type and message as the `error` field."""
        self.log(logging.ERROR, event, exc_info=True, **fields)
