"""One structured log line per event: ``event=c_store calling_ae=… status=0x0000 ms=1.2``.

Key=value lines are greppable by admins and parseable by log shippers without a JSON
dependency in every consumer.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/^+@")


def _fmt(value: object) -> str:
    text = str(value)
    if text and all(ch in _SAFE for ch in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


#: Told of every event whatever the log level (the node's metrics, ``node.metrics``).
EventSink = Callable[[str, Mapping[str, object]], None]
_sink: EventSink | None = None


def set_event_sink(sink: EventSink | None) -> None:
    """Send every event to ``sink`` too (None: stop); one sink per process."""
    global _sink
    _sink = sink


def log_event(
    logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: object
) -> None:
    """Log ``event`` with ``fields`` as one key=value line (and tell the event sink)."""
    sink = _sink
    if sink is not None:
        sink(event, fields)
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={event}"]
    parts.extend(f"{key}={_fmt(value)}" for key, value in fields.items())
    logger.log(level, " ".join(parts))


def configure_logging(level: str = "INFO") -> None:
    """Send the node's structured lines to stderr; quiet the libraries' chatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "pydicom", "deid", "sqlalchemy", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
