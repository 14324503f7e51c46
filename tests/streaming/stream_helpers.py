"""Test helpers for the streaming engine (not shipped in the package)."""

from __future__ import annotations

from collections.abc import Iterable

from feq_lab.streaming.engine import Block, Event, StreamEngine


def run_blocks(engine: StreamEngine, blocks: Iterable[Block]) -> list[Event]:
    """Feed every block, flush at the end; all emitted objects (pick/update/final/retract) in
    emission order (`engine.finals` keeps the final events)."""
    events: list[Event] = []
    for block in blocks:
        events += engine.feed(block)
    return events + engine.flush()
