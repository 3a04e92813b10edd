"""The mobile side of the wire: OIP v2 requests over HTTP or HTTPS (http.client and ssl, no
dependencies), with a deadline on every request and, for tests and demos, a transport shaped to a
named network's link. Over HTTPS the server's certificate is verified against the system's CAs or
a given CA file; a bearer token never goes in clear text to a host that is not this machine unless
the caller allows it.

Any way the server can fail (refused or dropped connection, no answer by the deadline, an error
status, a garbled answer) surfaces as one exception, `ServerUnavailable`, so the caller has one
thing to catch before finishing the request itself.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from .auth import authorization_header
from .errors import NeurosurgeonError
from .protocol import (
    HEADER_LENGTH,
    ProtocolError,
    decode_infer_response,
    encode_infer_request,
)

__all__ = ["InferAnswer", "InferenceClient", "ServerUnavailable", "ShapedLink", "is_loopback"]


class ServerUnavailable(NeurosurgeonError):
    """The server could not complete this request; `reason` says how it failed."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ShapedLink:
    """Paces the client's own transfers to a link's bandwidth and adds its latency (half an RTT each
    way): a token bucket in the transport, so that a loopback connection behaves like Wi-Fi, LTE or 3G."""

    def __init__(self, up_mbps: float, down_mbps: float, rtt_s: float, chunk_bytes: int = 16 * 1024):
        self.up_mbps, self.down_mbps, self.rtt_s = up_mbps, down_mbps, rtt_s
        self.chunk_bytes = chunk_bytes

    @classmethod
    def from_network(cls, network) -> ShapedLink:
        """The link of a named network (runtime/planner.py's NETWORKS)."""
        return cls(network.up_mbps, network.down_mbps, network.rtt_s)

    def one_way_delay(self) -> None:
        time.sleep(self.rtt_s / 2)

    def pace(self, started: float, sent_bytes: int, mbps: float) -> None:
        """Sleep until `sent_bytes` since `started` fit within the link's rate."""
        due = started + sent_bytes * 8 / (mbps * 1e6)
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


@dataclass
class InferAnswer:
    outputs: dict[str, np.ndarray]
    parameters: dict
    seconds: float  # the whole exchange as the mobile side saw it
    upload_bytes: int
    download_bytes: int
    encode_s: float = 0.0  # building the request, coding its tensors included (work of this side, not the link's)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class InferenceClient:
    def __init__(self, url: str, token: str | None = None, link: ShapedLink | None = None, connect_timeout_s: float = 2.0,
                 ca_file: str | None = None, allow_plain_token: bool = False):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NeurosurgeonError(f"server URL {url!r}: expected http://HOST:PORT or https://HOST:PORT")
        self.url = url
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        if token and self._scheme == "http" and not is_loopback(self._host) and not allow_plain_token:
            raise NeurosurgeonError(f"refusing to send the bearer token in clear text to {self._host} over http://: "
                                    "use https:// (or allow it on a network you trust: --allow-plain-token)")
        self._context = None
        if self._scheme == "https":
            try:
                self._context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as err:
                raise NeurosurgeonError(f"CA file {ca_file}: cannot use it ({getattr(err, 'strerror', None) or err})") from None
        self.token = token
        self.link = link
        self.connect_timeout_s = connect_timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            timeout = min(timeout, self.connect_timeout_s)
            self._conn = (http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._context)
                          if self._context else http.client.HTTPConnection(self._host, self._port, timeout=timeout))
            self._conn.connect()
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn.sock.settimeout(timeout)
        return self._conn

    def _exchange(self, method: str, path: str, body: bytes, headers: dict[str, str], deadline_s: float
                  ) -> tuple[int, dict[str, str], bytes, float]:
        """One request/response within `deadline_s`; the connection is reused while it stays healthy."""
        started = time.perf_counter()
        end = started + deadline_s

        def remaining() -> float:
            left = end - time.perf_counter()
            if left <= 0:
                raise TimeoutError("deadline passed")
            return left

        headers = {**headers, "Content-Length": str(len(body))}
        if self.token:
            headers.update(authorization_header(self.token))
        try:
            if self.link:
                self.link.one_way_delay()
            # A kept-alive connection the server has closed meanwhile (its idle timeout) fails at the
            # first write or read: then, nothing having been answered, the request goes again once,
            # on a new connection (inference is idempotent).
            for fresh in (self._conn is None, True):
                conn = self._connection(remaining())
                try:
                    response, sock = self._send(conn, method, path, headers, body, remaining)
                    break
                except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                    self.close()
                    if fresh:
                        raise
            payload = self._read_body(sock, response, remaining)
            if self.link:
                self.link.one_way_delay()
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, payload, time.perf_counter() - started
        except TimeoutError:
            self.close()
            raise ServerUnavailable(f"no answer within the {deadline_s:.2f} s deadline") from None
        except ssl.SSLCertVerificationError as err:
            self.close()
            raise ServerUnavailable(f"the server's TLS certificate does not verify ({err.verify_message}): give the CA "
                                    "that signed it (--ca-file) or fix the server's certificate") from None
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise ServerUnavailable(f"connection failed: {type(err).__name__}: {err}") from None

    def _send(self, conn, method: str, path: str, headers: dict[str, str], body: bytes, remaining):
        """Send the request and read the answer's status line and headers: (response, its socket)."""
        conn.putrequest(method, self._prefix + path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        self._send_body(conn, body, remaining)
        sock = conn.sock  # getresponse() hands the socket to the response when the server will close
        sock.settimeout(remaining())
        return conn.getresponse(), sock

    def _send_body(self, conn, body: bytes, remaining) -> None:
        if not self.link:
            conn.send(body)
            return
        started = time.perf_counter()
        view = memoryview(body)
        for offset in range(0, len(body), self.link.chunk_bytes):
            conn.sock.settimeout(remaining())
            conn.send(view[offset:offset + self.link.chunk_bytes])
            self.link.pace(started, min(offset + self.link.chunk_bytes, len(body)), self.link.up_mbps)

    def _read_body(self, sock, response, remaining) -> bytes:
        chunks, received, started = [], 0, time.perf_counter()
        step = self.link.chunk_bytes if self.link else 1 << 20
        while True:
            left = remaining()  # raises once the deadline has passed
            if sock.fileno() != -1:  # else the response owns it, with the timeout set before
                sock.settimeout(left)
            chunk = response.read(step)
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
            if self.link:
                self.link.pace(started, received, self.link.down_mbps)
        return b"".join(chunks)

    def ready(self, deadline_s: float = 2.0, model: str | None = None) -> tuple[dict, float]:
        """The load from the server's ready endpoint (or `model`'s: the load of the bundle serving it),
        and the round trip it took."""
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        status, _, payload, seconds = self._exchange("GET", path, b"", {}, deadline_s)
        if status != 200:
            raise ServerUnavailable(f"server not ready (HTTP {status})")
        try:
            body = json.loads(payload or b"{}")
        except json.JSONDecodeError:
            body = {}
        return body.get("load", {}), seconds

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], deadline_s: float,
              parameters: dict | None = None, codecs: dict[str, str] | None = None) -> InferAnswer:
        """`codecs`: the inputs to send coded, with their codec (runtime/codec.py)."""
        started = time.perf_counter()
        body, headers = encode_infer_request(inputs, outputs, binary=True, parameters=parameters, codecs=codecs)
        encode_s = time.perf_counter() - started
        status, answer_headers, payload, seconds = self._exchange("POST", f"/v2/models/{model}/infer", body, headers, deadline_s)
        if status != 200:
            try:
                message = json.loads(payload).get("error", "")
            except (json.JSONDecodeError, AttributeError):
                message = payload[:200].decode(errors="replace")
            raise ServerUnavailable(f"server answered HTTP {status}: {message}")
        length = answer_headers.get(HEADER_LENGTH.lower())
        try:
            decoded, parameters = decode_infer_response(payload, int(length) if length else None)
        except (ProtocolError, ValueError) as err:
            raise ServerUnavailable(f"garbled answer: {err}") from None
        missing = [name for name in outputs if name not in decoded]
        if missing:
            raise ServerUnavailable(f"answer lacks outputs {missing}")
        return InferAnswer(decoded, parameters, seconds, len(body), len(payload), encode_s)
