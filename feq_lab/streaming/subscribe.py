"""`python -m feq_lab.streaming.subscribe`: print the monitor's published events as JSON lines.

    python -m feq_lab.streaming.subscribe                              # everything, 127.0.0.1:5566
    python -m feq_lab.streaming.subscribe --kind final --kind retract  # what a catalogue needs
    python -m feq_lab.streaming.subscribe --endpoint tcp://10.0.0.5:5566 --count 10

A gap in the messages' sequence numbers (the publisher dropped messages for a subscriber that
did not keep up) is reported on stderr; the picks files still hold every final event.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

import zmq


def subscribe(
    endpoint: str, kinds: Sequence[str] = (), timeout_s: float | None = None
) -> Iterator[tuple[str, str, int]]:
    """Yield (kind, json text, seq) as they arrive; stop after `timeout_s` without a message."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for kind in kinds or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, kind.encode("ascii"))
    sock.connect(endpoint)
    try:
        while True:
            if timeout_s is not None and not sock.poll(int(timeout_s * 1000)):
                return
            kind, payload, seq = sock.recv_multipart()
            yield kind.decode("ascii"), payload.decode("utf-8"), int(seq)
    finally:
        sock.close(0)
        ctx.term()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:5566")
    ap.add_argument(
        "--kind",
        action="append",
        default=[],
        choices=("pick", "update", "final", "retract"),
        help="only these kinds (repeatable); default all",
    )
    ap.add_argument("--count", type=int, default=0, help="exit after this many (0: never)")
    ap.add_argument("--timeout", type=float, default=None, help="exit after this many idle s")
    args = ap.parse_args(argv)
    expected = None
    try:
        for n, (_, text, seq) in enumerate(subscribe(args.endpoint, args.kind, args.timeout), 1):
            if expected is not None and seq != expected and not args.kind:
                print(f"lost {seq - expected} message(s) before #{seq}", file=sys.stderr)
            expected = seq + 1
            print(text, flush=True)
            if args.count and n >= args.count:
                break
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
