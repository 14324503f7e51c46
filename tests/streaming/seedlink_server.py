"""A small SeedLink v3 server for tests and demos: serves 512-byte miniSEED records from memory.

It speaks what obspy's `SeedLinkConnection` uses in multi-station mode: HELLO, STATION, SELECT,
DATA [seq], END, then packets of 'SL' + 6 hex digits (sequence number) + one 512-byte record,
and a final 'END' when the data are exhausted (like a dial-up / time-window request). It can drop
the connection after a number of packets to exercise the client's reconnect-and-resume path.
No SeedLink server is installable from the package registries; this one is enough for obspy.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
from typing import Any, Sequence

RECORD_SIZE = 512


def _record_samples(record: bytes) -> int:
    """Number of samples in a miniSEED record (fixed header bytes 30-31, either byte order)."""
    year_be = struct.unpack(">H", record[20:22])[0]
    order = ">" if 1900 <= year_be <= 2200 else "<"
    return struct.unpack(order + "H", record[30:32])[0]


def stream_to_records(stream: Any, encoding: str = "FLOAT32") -> list[bytes]:
    """512-byte miniSEED records of an obspy Stream, interleaved by start time like a live feed."""
    records: list[tuple[float, int, bytes]] = []
    for k, tr in enumerate(stream):
        tr = tr.copy()
        if encoding == "FLOAT32":
            tr.data = tr.data.astype("float32")
        buf = io.BytesIO()
        tr.write(buf, format="MSEED", reclen=RECORD_SIZE, encoding=encoding)
        raw = buf.getvalue()
        t0, rate, done = float(tr.stats.starttime.timestamp), float(tr.stats.sampling_rate), 0
        for a in range(0, len(raw), RECORD_SIZE):
            chunk = raw[a : a + RECORD_SIZE]
            records.append((t0 + done / rate, k, chunk))
            done += _record_samples(chunk)
    records.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in records]


class SeedLinkTestServer:
    """Serve `records` on 127.0.0.1 (an ephemeral port) from a background thread.

    `drop_after`: close the first connection after that many packets (the client must reconnect
    and resume with DATA <next seq>). `send_end`: send END after the last record.
    """

    def __init__(
        self,
        records: Sequence[bytes],
        drop_after: int | None = None,
        send_end: bool = True,
        host: str = "127.0.0.1",
    ):
        self.records = list(records)
        self.drop_after = drop_after
        self.send_end = send_end
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(4)
        self.host, self.port = self.sock.getsockname()
        self.connections = 0
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> "SeedLinkTestServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            try:
                self._session(conn, first=self.connections == 1)
            except OSError:
                pass
            finally:
                conn.close()

    def _session(self, conn: socket.socket, first: bool) -> None:
        conn.settimeout(5.0)
        buf = b""
        start_seq = 0
        while not self._stop.is_set():
            while b"\r" not in buf:
                data = conn.recv(1024)
                if not data:
                    return
                buf += data
            line, buf = buf.split(b"\r", 1)
            buf = buf.lstrip(b"\n")
            words = line.decode("ascii", "replace").split()
            if not words:
                continue
            self.commands.append(" ".join(words))
            verb = words[0].upper()
            if verb == "HELLO":
                conn.sendall(b"SeedLink v3.1 (feq-lab test server) :: SLPROTO:3.1\r\nfeq-lab\r\n")
            elif verb in ("STATION", "SELECT"):
                conn.sendall(b"OK\r\n")
            elif verb in ("DATA", "FETCH"):
                if len(words) > 1:
                    start_seq = int(words[1], 16)
                conn.sendall(b"OK\r\n")
            elif verb == "END":
                self._stream(conn, start_seq, drop=self.drop_after if first else None)
                return
            elif verb == "BYE":
                return
            else:
                conn.sendall(b"ERROR\r\n")

    def _stream(self, conn: socket.socket, start_seq: int, drop: int | None) -> None:
        sent = 0
        for seq in range(start_seq, len(self.records)):
            if self._stop.is_set() or (drop is not None and sent >= drop):
                return  # drop the connection mid-stream
            conn.sendall(b"SL%06X" % (seq % 0x1000000) + self.records[seq])
            sent += 1
        if self.send_end:
            conn.sendall(b"END")
        # stay open until the client hangs up, as a real server would
        conn.settimeout(10.0)
        try:
            while conn.recv(1024):
                pass
        except OSError:
            pass
