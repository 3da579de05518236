"""How a party proves who it is: mutual TLS and per-identity bearer tokens.

`Security` holds one party's credentials (a CA, its own certificate and key,
and/or a token file, see splitnn.security.identity) and its identity. The same
object serves both ends:

- a worker builds its server credentials (client certificates signed by the CA
  required) and a `TokenInterceptor` from it, and dials its peers with it when it
  drives the chain;
- the orchestrator builds each `WorkerClient` with it, expecting the worker it
  calls NAME to present a certificate for NAME.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from splitnn.errors import SecurityError
from splitnn.security.identity import SHARED, TokenTable, parse_tokens, read_tokens

log = logging.getLogger("splitnn.security")

AUTH_HEADER = "authorization"
BEARER = "Bearer "
# Methods answered without a token: the standard health probe says only "up", and
# container health checks run it without secrets. TLS, when on, still applies.
TOKEN_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise SecurityError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if b"-----BEGIN" not in data:
        raise SecurityError(f"{what} {path} is not PEM")
    return data


def is_loopback(listen: str) -> bool:
    """Whether HOST of a HOST:PORT listen address is loopback only (127.x, ::1, localhost)."""
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Security:
    """One party's credentials. TLS needs all of `ca`, `cert` and `key` (mutual TLS);
    `token` (read from `token_file` when given that way) is sent / required as
    `authorization: Bearer <token>`. `host_cert_dir`, when set, holds HOST.pem and
    HOST.key for workers this process starts itself (``--local``). `identity` is who
    this party is (its token file line, its certificate's name); `tokens` every
    identity the token file names, which a worker accepts."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None
    token_file: Path | None = None
    host_cert_dir: Path | None = None
    identity: str = SHARED
    tokens: TokenTable | None = None

    def __post_init__(self):
        given = [x is not None for x in (self.ca, self.cert, self.key)]
        if any(given) and not all(given):
            raise SecurityError(
                "TLS needs a CA certificate, a certificate and its key together "
                "(--tls-ca, --tls-cert, --tls-key, or --tls-dir)"
            )
        if self.token is None and self.token_file is not None:
            tokens = read_tokens(self.token_file)
            object.__setattr__(self, "tokens", tokens)
            object.__setattr__(self, "token", tokens.token_for(self.identity))
        elif self.token is not None and self.tokens is None:
            if not self.token:
                raise SecurityError("the token is empty")
            object.__setattr__(self, "tokens", parse_tokens(self.token, "token"))

    # ---- constructors ----------------------------------------------------------

    @classmethod
    def from_options(
        cls,
        tls_dir=None,
        ca=None,
        cert=None,
        key=None,
        token_file=None,
        identity: str = "orchestrator",
    ) -> Security | None:
        """From command-line options; None when none is given. `tls_dir` means
        DIR/ca.pem plus DIR/<identity>.pem and .key (unless given one by one), and is
        where host certificates for local workers are looked up."""
        host_dir = None
        if tls_dir is not None:
            tls_dir = Path(tls_dir)
            if not tls_dir.is_dir():
                raise SecurityError(f"--tls-dir {tls_dir}: not a directory")
            ca = ca or tls_dir / "ca.pem"
            cert = cert or tls_dir / f"{identity}.pem"
            key = key or tls_dir / f"{identity}.key"
            host_dir = tls_dir
        elif ca is not None:
            host_dir = Path(ca).parent
        if ca is None and cert is None and key is None and token_file is None:
            return None
        security = cls(
            ca=Path(ca) if ca else None,
            cert=Path(cert) if cert else None,
            key=Path(key) if key else None,
            token_file=Path(token_file) if token_file else None,
            host_cert_dir=host_dir,
            identity=identity,
        )
        security.check_files()
        return security

    # ---- what it enables -------------------------------------------------------

    @property
    def tls(self) -> bool:
        """Whether TLS (mutual) is on."""
        return self.ca is not None

    def check_files(self) -> None:
        """Read every file now, so a wrong path is reported before anything starts."""
        if self.tls:
            self._pems()

    def _pems(self) -> tuple[bytes, bytes, bytes]:
        return (
            _read_pem(self.ca, "CA certificate"),
            _read_pem(self.cert, "certificate"),
            _read_pem(self.key, "private key"),
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Server TLS credentials requiring a client certificate signed by the CA."""
        if not self.tls:
            return None
        ca, cert, key = self._pems()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )

    def server_interceptors(self) -> list:
        """The token check, when tokens are set."""
        return [TokenInterceptor(self.tokens)] if self.tokens else []

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """Client TLS credentials: verify the server against the CA, present our cert."""
        if not self.tls:
            return None
        ca, cert, key = self._pems()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def ssl_server_context(self) -> ssl.SSLContext | None:
        """The data port's TLS (splitnn.transport.frames) as the gRPC port's: this
        party's certificate, and client certificates signed by the CA required."""
        if not self.tls:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(context)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def ssl_client_context(self) -> ssl.SSLContext | None:
        """TLS to a peer's data port: verify it against the CA and its name (the
        connection's server_hostname), present our certificate."""
        if not self.tls:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the name, requires a cert
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(context)
        return context

    def _load(self, context: ssl.SSLContext) -> None:
        self._pems()  # readable PEM files, or the same SecurityError as the gRPC side
        try:
            context.load_cert_chain(str(self.cert), str(self.key))
            context.load_verify_locations(cafile=str(self.ca))
        except (ssl.SSLError, OSError) as err:
            raise SecurityError(f"cannot load TLS files for the data port: {err}") from None

    def metadata(self) -> tuple:
        """Call metadata carrying the token, if any."""
        return ((AUTH_HEADER, BEARER + self.token),) if self.token else ()

    def channel_options(self, expected_name: str) -> list:
        """Channel options making TLS check the server's certificate against
        `expected_name`, whatever the address (an IP, localhost, a DNS name)."""
        if not self.tls:
            return []
        return [("grpc.ssl_target_name_override", expected_name)]

    def client_factory(self, client_class=None, **client_kwargs):
        """A `(name, address, server_name=None) -> client` whose channel uses these
        credentials and token and expects the worker called NAME to present a
        certificate for NAME (or `server_name`). `client_class` takes PeerSettings
        arguments: WorkerClient (the default) or, for a worker driving the chain from
        its event loop, splitnn.transport.aio_client.AsyncExchangeClient."""
        if client_class is None:  # imported here: this module stays free of torch
            from splitnn.transport.client import WorkerClient as client_class

        credentials = self.channel_credentials()
        metadata = self.metadata()

        def factory(name: str, address: str, server_name: str | None = None):
            return client_class(
                name,
                address,
                credentials=credentials,
                channel_options=self.channel_options(server_name or name),
                metadata=metadata,
                server_name=server_name,
                **client_kwargs,
            )

        return factory

    def worker_args(self, host: str, token_file: Path | None = None) -> list[str]:
        """`splitnn-worker` flags for a local worker HOST with matching security: its
        certificate from `host_cert_dir`, the same CA, the same token."""
        args: list[str] = []
        if self.tls:
            if self.host_cert_dir is None:
                raise SecurityError(f"no directory to find {host}.pem and {host}.key in")
            cert = self.host_cert_dir / f"{host}.pem"
            key = self.host_cert_dir / f"{host}.key"
            for path in (cert, key):
                if not path.is_file():
                    raise SecurityError(
                        f"{path} not found: local worker {host} needs a certificate; run "
                        f"`splitnn certs issue {host} --dir {self.host_cert_dir}`"
                    )
            args += ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(self.ca)]
        token_file = token_file or self.token_file
        if self.token:
            if token_file is None:
                raise SecurityError("a token file is needed to pass the token to a worker")
            args += ["--token-file", str(token_file)]
        return args


def bearer_token(metadata) -> str | None:
    """The token of a call's one `authorization: Bearer <token>` entry, if it has one."""
    values = [v for k, v in (metadata or ()) if k.lower() == AUTH_HEADER]
    if len(values) != 1:
        return None
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value[len(BEARER) :] if value.startswith(BEARER) else None


def token_identity(tokens: TokenTable, metadata) -> str | None:
    """The identity whose token a call carries, or None."""
    token = bearer_token(metadata)
    return None if token is None else tokens.identify(token)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call (unary or streaming) without `authorization: Bearer <token>`
    of an identity in the token table with UNAUTHENTICATED, before the handler runs.
    Compares in constant time."""

    def __init__(self, tokens: TokenTable, exempt_prefixes=TOKEN_EXEMPT_PREFIXES):
        self._tokens = tokens
        self._exempt = tuple(exempt_prefixes)

    def _authorized(self, metadata) -> bool:
        return token_identity(self._tokens, metadata) is not None

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(self._exempt) or self._authorized(
            handler_call_details.invocation_metadata
        ):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return None
        log.warning("refused %s: missing or wrong token", method)
        return _deny(handler)


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that aborts with UNAUTHENTICATED."""

    def abort(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong authorization token")

    def abort_stream(_request, context):
        abort(_request, context)
        yield  # pragma: no cover  (makes this a generator; abort raises)

    kind = (handler.request_streaming, handler.response_streaming)
    if kind == (False, False):
        return grpc.unary_unary_rpc_method_handler(abort)
    if kind == (False, True):
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    if kind == (True, False):
        return grpc.stream_unary_rpc_method_handler(abort)
    return grpc.stream_stream_rpc_method_handler(abort_stream)
