"""Text from outside (file names, label names of a model file, upload names, Host headers) made safe to print and
log: a name must not start a forged line or reach the terminal as an escape sequence. Standard library only."""

from __future__ import annotations

import logging


def printable(text: str, limit: int | None = None) -> str:
    """``text`` safe to print and log: control characters (NUL, ESC, CR/LF ...), bidirectional overrides and other
    unprintable code points escaped as ``\\xNN`` / ``\\uNNNN`` (backslashes doubled), cut at ``limit`` chars (None:
    not cut). Printable text, accented or not, is unchanged."""
    text = str(text)
    out = []
    for ch in text if limit is None else text[:limit]:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1])  # '\x1b', '\u202e', '\x00', '\n'
    return "".join(out) + ("..." if limit is not None and len(text) > limit else "")


def shown(text: object) -> str:
    """A name (a path, a label) as printed in medistill's text output: :func:`printable`, not cut; backslashes are
    kept as they are unless the name needs escaping, so that ordinary Windows-style names read as before."""
    text = str(text)
    return text if text.isprintable() else printable(text)


class EscapingFormatter(logging.Formatter):
    """A log formatter whose messages are :func:`shown`: a file or label name inside a message cannot forge a log
    line or send escape sequences to the terminal (a traceback, added after the message, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = shown(record.message)
        return super().formatMessage(record)
