"""A fault-injecting TCP proxy for tests: forwards 127.0.0.1:<port> to a target, but resets the first N
connections at once ("refused") and cuts the next M after some bytes ("cut"), optionally only the
connections whose first bytes contain a marker (e.g. ``b"git-receive-pack"``: only pushes).

    with FlakyProxy(target_port, refuse=2, cut=1, cut_after=300) as proxy:
        url = f"git://127.0.0.1:{proxy.port}/"
"""

from __future__ import annotations

import socket
import struct
import threading

__all__ = ["FlakyProxy"]


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a dropped connection looks to the peer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FlakyProxy:
    def __init__(
        self,
        target_port: int,
        *,
        refuse: int = 0,
        cut: int = 0,
        cut_after: int = 200,
        match: bytes | None = None,
        target_host: str = "127.0.0.1",
    ) -> None:
        self.target = (target_host, target_port)
        self.refuse, self.cut, self.cut_after, self.match = refuse, cut, cut_after, match
        self.connections = self.refused = self.cuts = self.forwarded = 0
        self._lock = threading.Lock()
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(64)
        self.port = self._srv.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    # ---- lifecycle
    def start(self) -> FlakyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            self._srv.close()
        except OSError:
            pass

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_faults(
        self, *, refuse: int = 0, cut: int = 0, cut_after: int | None = None, match: bytes | None = None
    ) -> None:
        with self._lock:
            self.refuse, self.cut, self.match = refuse, cut, match
            if cut_after is not None:
                self.cut_after = cut_after

    # ---- work
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _decide(self, first: bytes) -> str:
        with self._lock:
            self.connections += 1
            if self.match is not None and self.match not in first:
                self.forwarded += 1
                return "forward"
            if self.refuse > 0:
                self.refuse -= 1
                self.refused += 1
                return "refuse"
            if self.cut > 0:
                self.cut -= 1
                self.cuts += 1
                return "cut"
            self.forwarded += 1
            return "forward"

    @staticmethod
    def _read_first(client: socket.socket) -> bytes:
        """The first request: for git's protocol a whole pkt-line (git may send its 4-byte length alone)."""
        data = b""
        while len(data) < 4:
            chunk = client.recv(65536)
            if not chunk:
                return data
            data += chunk
        try:
            need = int(data[:4], 16)
        except ValueError:
            return data  # not a pkt-line (e.g. HTTP): the first chunk is enough
        while len(data) < need:
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    def _handle(self, client: socket.socket) -> None:
        first = b""
        if self.match is not None:  # the protocol's first request names the service
            client.settimeout(10)
            try:
                first = self._read_first(client)
            except OSError:
                _reset(client)
                return
            client.settimeout(None)
        action = self._decide(first)
        if action == "refuse":
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        budget = [self.cut_after if action == "cut" else -1]
        done = threading.Event()

        def close_both() -> None:
            if not done.is_set():
                done.set()
                _reset(client)
                _reset(upstream)

        def pump(src: socket.socket, dst: socket.socket, counts: bool) -> None:
            try:
                while not done.is_set():
                    data = src.recv(65536)
                    if not data:
                        try:
                            dst.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        return
                    if counts and budget[0] >= 0:
                        if len(data) >= budget[0]:
                            if budget[0]:
                                dst.sendall(data[: budget[0]])
                            close_both()
                            return
                        budget[0] -= len(data)
                    dst.sendall(data)
            except OSError:
                close_both()

        if first:
            if budget[0] >= 0 and len(first) >= budget[0]:
                upstream.sendall(first[: budget[0]])
                close_both()
                return
            if budget[0] >= 0:
                budget[0] -= len(first)
            upstream.sendall(first)
        t = threading.Thread(target=pump, args=(upstream, client, False), daemon=True)
        t.start()
        pump(client, upstream, True)
        t.join(timeout=600)
        if not done.is_set():
            done.set()
            for s in (client, upstream):
                try:
                    s.close()
                except OSError:
                    pass
