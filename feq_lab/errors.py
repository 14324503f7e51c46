"""Errors raised at the edges; each names the key, file or trace at fault so users can fix it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class FeqLabError(Exception):
    """Base class: every error the lab raises on purpose."""


class ConfigError(FeqLabError, ValueError):
    """An impossible config value; the message starts with the offending key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class DataError(FeqLabError):
    """Bad input data; names the file and, where known, the trace."""

    def __init__(self, message: str, path: str | None = None, trace: str | None = None):
        self.path = path
        self.trace = trace
        where = ", ".join(x for x in (f"file {path}" if path else "", f"trace {trace}" if trace else "") if x)
        super().__init__(f"{message} ({where})" if where else message)


class SelectionError(FeqLabError):
    """A sweep from which no model can be chosen: no runs, missing metrics, infeasible policy."""


@contextmanager
def one_line_errors(app: str) -> Iterator[None]:
    """Around an entry point's body: expected bad input (a FeqLabError) ends the program with
    one stderr line, `<app>: error: <what and where>`, and exit code 2 — never a traceback."""
    try:
        yield
    except FeqLabError as err:
        print(f"{app}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
