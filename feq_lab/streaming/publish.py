"""The monitor's events on a local ZeroMQ PUB socket: the same JSON objects as the JSON lines.

Why ZeroMQ PUB (pyzmq) rather than a WebSocket server: a PUB socket's sends never block by
design, its I/O runs on libzmq's own thread, and a subscriber that is slow or gone is handled
by the socket's per-subscriber high-water mark ("when a ZMQ_PUB socket enters the mute state
due to having reached the high water mark for a subscriber, then any messages that would be
sent to the subscriber in question shall instead be dropped", zmq_socket(3)). A WebSocket
server would need an asyncio loop in a second thread and our own bounded queue per client to
get the same property. Subscribers exist for every language observatories use (C, C++, Python,
Java), and SeisComP-side bridges commonly speak ZeroMQ.

Wire format, one multipart message per object: `[kind, json, seq]`, all UTF-8/ASCII:
`kind` is the lifecycle kind (`pick|update|final|retract`; `final` when the object has none),
so `SUBSCRIBE b"final"` receives final events only and `b""` everything; `json` is byte for byte
the object's JSON line (without the newline); `seq` counts the publisher's messages from 0, so a
subscriber sees a gap when the drop policy dropped messages for it (it can then re-read the
picks files, which always hold every final event).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import zmq

from feq_lab.errors import ConfigError

log = logging.getLogger("feq_lab.streaming")


@dataclass(frozen=True)
class PublishConfig:
    """`outputs.publish` of conf/stream.yaml."""

    enabled: bool = False
    bind: str = "127.0.0.1"  # the interface; anything but loopback only when told (config)
    port: int = 5566  # 0: an ephemeral port (see Publisher.endpoint)
    queue: int = 1000  # messages queued per subscriber before newer ones are dropped for it
    linger_ms: int = 500  # on close, how long queued messages may still be sent
    wait_s: float = 0.0  # before the monitor starts, wait this long for a first subscriber

    @classmethod
    def from_mapping(
        cls, cfg: Mapping[str, Any] | None, key: str = "outputs.publish"
    ) -> PublishConfig:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{key}.{min(unknown)}", "unknown key")
        out = cls(**cfg)
        if not isinstance(out.enabled, bool):
            raise ConfigError(f"{key}.enabled", f"must be true or false, got {out.enabled!r}")
        if not isinstance(out.bind, str) or not out.bind or any(c in out.bind for c in "/: "):
            raise ConfigError(
                f"{key}.bind", f"must be an interface address like 127.0.0.1, got {out.bind!r}"
            )
        for name, low, high in (("port", 0, 65535), ("queue", 1, 10**7), ("linger_ms", 0, 60000)):
            value = getattr(out, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{key}.{name}", f"must be an integer in [{low}, {high}]")
        if (
            isinstance(out.wait_s, bool)
            or not isinstance(out.wait_s, (int, float))
            or out.wait_s < 0
        ):
            raise ConfigError(f"{key}.wait_s", f"must be seconds >= 0, got {out.wait_s!r}")
        return out


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface name ("eth0") or "*"
        return False


class Publisher:
    """A ZeroMQ XPUB socket bound to `bind:port` (XPUB = PUB that also sees subscriptions).

    `send` never blocks the monitor: with no subscriber a message is discarded, and a
    subscriber that does not keep up gets at most `queue` messages queued, newer ones dropped for
    it alone (ZeroMQ's PUB drop policy; XPUB_NODROP stays off). One thread only (the monitor's):
    ZeroMQ sockets are not thread-safe.
    """

    def __init__(self, cfg: PublishConfig):
        self.cfg = cfg
        self.seq = 0
        self.dropped = 0  # sends refused outright (never expected for XPUB without NODROP)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, cfg.queue)
        self._sock.setsockopt(zmq.LINGER, cfg.linger_ms)
        # every (un)subscription reaches us, so wait_for_subscriber sees a second subscriber too
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        host = "127.0.0.1" if cfg.bind == "localhost" else cfg.bind
        address = f"tcp://{host}:{cfg.port if cfg.port else '*'}"
        try:
            self._sock.bind(address)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            self._ctx.term()
            key = "outputs.publish.port" if exc.errno == zmq.EADDRINUSE else "outputs.publish.bind"
            raise ConfigError(key, f"cannot bind {address}: {exc}") from exc
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.subscriptions = 0
        self._closed = False
        if not is_loopback(host):
            log.warning(
                "publishing events on %s: reachable from other machines (outputs.publish.bind)",
                self.endpoint,
            )
        else:
            log.info("publishing events on %s", self.endpoint)

    def send(self, kind: str, payload: str) -> None:
        """Queue one message (`payload`: the object's JSON text); returns at once."""
        if self._closed:
            return
        try:
            self._sock.send_multipart(
                [kind.encode("ascii"), payload.encode("utf-8"), str(self.seq).encode("ascii")],
                flags=zmq.NOBLOCK,
            )
        except zmq.Again:
            self.dropped += 1
        self.seq += 1
        self._drain_subscriptions()

    def _drain_subscriptions(self) -> None:
        """Read the (un)subscription messages XPUB queues for us, so they never pile up."""
        while self._sock.poll(0, zmq.POLLIN):
            frame = self._sock.recv(zmq.NOBLOCK)
            if frame[:1] == b"\x01":
                self.subscriptions += 1
            elif frame[:1] == b"\x00":
                self.subscriptions = max(self.subscriptions - 1, 0)

    def wait_for_subscriber(self, timeout_s: float) -> bool:
        """Block up to `timeout_s` until a subscriber has subscribed (replays, tests): a PUB
        socket drops what it sends before a subscription arrives ("slow joiner")."""
        deadline = time.monotonic() + timeout_s
        self._drain_subscriptions()
        while self.subscriptions == 0:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                self._drain_subscriptions()
                return self.subscriptions > 0
            self._drain_subscriptions()
        return True

    def close(self) -> None:
        """Send what is queued for at most `linger_ms`, then release the port."""
        if self._closed:
            return
        self._closed = True
        self._sock.close(self.cfg.linger_ms)
        self._ctx.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
