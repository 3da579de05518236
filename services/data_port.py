"""The data port: a worker's Exchange over plain TCP (or TLS) frames, beside gRPC.

Why: gRPC Python hands every message between its threads, so one round trip of a
small op costs 0.25-0.33 ms here against about 0.1 ms for a socket, and its copies
hold large tensors to about half of what TCP moves. A driving worker that is told
a peer's data port (Stage.data_address) sends that peer its ops here instead.

Only the carriage differs: the same ExchangeRequests and answers
(splitnn.transport.frames), the same caller identity (its certificate under
mutual TLS, its token, or the anonymous caller on a worker without either), the
same policy, call slots and limits, and the same status codes, sent as an ERROR
frame before the connection closes. One thread serves each connection, reading
an op, applying it and answering it, as gRPC's handler thread serves a stream.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading

import grpc

from splitnn.model.threads import adopt_torch_threads
from splitnn.security.policy import AUTH_HEADER, BEARER
from splitnn.services.registration import FRAME_EXCHANGE, PARSE_EXCHANGE, checked
from splitnn.services.servicer import WorkerServicer, error_status
from splitnn.transport import frames
from splitnn.transport.frames import FrameError, Kind

log = logging.getLogger("splitnn.worker")

HANDSHAKE_SECONDS = 10.0


class _Presented:
    """What a connection's caller presented, in the shape AccessPolicy.identify reads
    of a gRPC call: its verified certificate's common name and its token."""

    def __init__(self, certificate: dict | None, token: str | None):
        self._certificate = certificate or {}
        self._token = token

    def auth_context(self) -> dict:
        names = [
            value.encode()
            for rdn in self._certificate.get("subject", ())
            for key, value in rdn
            if key == "commonName"
        ]
        return {"x509_common_name": names}

    def invocation_metadata(self) -> tuple:
        return ((AUTH_HEADER, BEARER + self._token),) if self._token else ()


class DataPortServer:
    """Serves a WorkerServicer's Exchange on `host:port` (0: any free) in frames.
    `ssl_context` (server side, client certificates required) for mutual TLS;
    at most `max_connections` at once; a connection silent for `idle_seconds`
    between ops (or inside one) is closed."""

    def __init__(
        self,
        servicer: WorkerServicer,
        host: str,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 64,
        idle_seconds: float | None = None,
    ):
        self.servicer = servicer
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.idle_seconds = idle_seconds or servicer.idle.idle_seconds
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=64)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._closed = False

    def start(self) -> None:
        """Accept connections on a thread of its own."""
        threading.Thread(target=self._accept, name="data-port", daemon=True).start()

    def close(self) -> None:
        """Stop accepting and end every open connection."""
        with self._lock:
            self._closed = True
            open_now = list(self._connections)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            frames.tune(conn)
            with self._lock:
                full = len(self._connections) >= self.max_connections
                if self._closed:
                    conn.close()
                    return
                if not full:
                    self._connections.add(conn)
            if full:
                self._refuse(conn)
                continue
            threading.Thread(
                target=self._connection, args=(conn,), name="data-port-conn", daemon=True
            ).start()

    def _refuse(self, conn: socket.socket) -> None:
        """Say why, in plaintext or not at all (a TLS caller sees the connection end)."""
        try:
            if self.ssl_context is None:
                conn.sendall(
                    frames.error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many connections")
                )
        except OSError:
            pass
        conn.close()

    def _connection(self, raw: socket.socket) -> None:
        adopt_torch_threads()
        conn = raw
        try:
            raw.settimeout(HANDSHAKE_SECONDS)
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(raw, server_side=True)
            self._session(conn)
        except (OSError, ssl.SSLError) as err:  # a handshake refused, a peer gone
            log.debug("data port connection ended: %s", err)
        finally:
            with self._lock:
                self._connections.discard(raw)
            try:
                conn.close()
            except OSError:
                pass

    def _session(self, conn: socket.socket) -> None:
        servicer = self.servicer
        status = "OK"
        try:
            frame = frames.read_frame(conn, frames.MAX_HELLO_BYTES)
            if frame is None:
                return
            kind, payload = frame
            if kind is not Kind.HELLO:
                raise FrameError("a connection opens with a hello")
            token = frames.token_of(payload.tobytes())
            certificate = conn.getpeercert() if self.ssl_context is not None else None
            caller = servicer.access.identify(_Presented(certificate, token))
            servicer.access.check_rpc(caller, "Exchange")
            with servicer.slots.hold(caller.name):
                conn.settimeout(self.idle_seconds)
                requests = checked(self._requests(conn))
                for message in servicer.serve_exchange(caller, requests, frames.CHUNK_BYTES):
                    # (counted in bytes_sent by the servicer, as on gRPC)
                    frames.send_frame(conn, Kind.MESSAGE, FRAME_EXCHANGE.pieces(message))
        except FrameError as err:
            status = "INVALID_ARGUMENT"
            _send_error(conn, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except TimeoutError:  # silent too long: closed without a word, as the caller
            status = "CANCELLED"  # may have gone; it opens a new connection when it needs one
        except OSError:
            status = "CANCELLED"  # the caller went away
        except Exception as err:
            found = error_status(err)
            if found is None:
                raise
            status = found[0].name
            _send_error(conn, *found)
        finally:
            if servicer.metrics is not None:
                servicer.metrics.rpc("Exchange", status)

    def _requests(self, conn: socket.socket):
        """The connection's ExchangeRequests, parsed as the gRPC stream parses them."""
        inbox = frames.Inbox()
        while (request := self._next_request(conn, inbox)) is not None:
            yield request
            del request  # applied: the inbox's buffer is free unless a tensor is built on it

    def _next_request(self, conn: socket.socket, inbox: frames.Inbox):
        frame = frames.read_frame(conn, frames.MAX_FRAME_BYTES, inbox)
        if frame is None:
            return None
        kind, payload = frame
        if kind is not Kind.MESSAGE:
            raise FrameError(f"a {kind.name} frame where an op was expected")
        self.servicer.bytes_received += len(payload)
        return PARSE_EXCHANGE(payload if len(payload) >= frames.LARGE_BYTES else payload.tobytes())


def _send_error(conn: socket.socket, code: grpc.StatusCode, details: str) -> None:
    try:
        conn.sendall(frames.error(code, details))
    except OSError:
        pass
