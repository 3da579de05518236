"""A small certificate authority for a splitnn cluster (`splitnn certs init / issue`).

`init_ca(DIR)` writes DIR/ca.pem and DIR/ca.key (EC P-256, self-signed, 10 years).
`issue(DIR, NAME)` writes DIR/NAME.pem and DIR/NAME.key signed by that CA, naming
NAME (plus localhost and 127.0.0.1 by default) in its subjectAltName and good for
both server and client authentication: a worker serves with it, and dials its
peers with it when it drives the chain; the orchestrator's identity is issued the
same way. Private keys are written readable by their owner only (0600).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from splitnn.errors import CertError

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_DAYS = 3650
HOST_DAYS = 3650
LOOPBACK_DNS = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    """Where an identity's files were written and the names it carries."""

    cert: Path
    key: Path
    dns: tuple[str, ...]
    ips: tuple[str, ...]


def cert_path(directory: Path, name: str) -> Path:
    """DIR/NAME.pem."""
    return Path(directory) / f"{name}.pem"


def key_path(directory: Path, name: str) -> Path:
    """DIR/NAME.key."""
    return Path(directory) / f"{name}.key"


def _check_name(name: str) -> None:
    if not _NAME.match(name) or name in ("ca", "..", "."):
        raise CertError(
            f"certificate name {name!r}: use letters, digits, '.', '_' or '-' "
            "(and not 'ca', which names the authority)"
        )


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if not force:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CertError(f"{path} exists; pass --force to replace it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # an existing file keeps its old mode through O_TRUNC


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if days < 1:
        raise CertError(f"validity must be at least 1 day, got {days}")
    now = datetime.datetime.now(datetime.UTC)
    return now - _CLOCK_SKEW, now + datetime.timedelta(days=days)


def init_ca(
    directory: Path, common_name: str = "splitnn CA", days: int = CA_DAYS, force: bool = False
) -> tuple[Path, Path]:
    """Make DIR/ca.pem and DIR/ca.key; returns their paths. Refuses to overwrite unless
    `force` (a new CA invalidates every certificate the old one signed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / CA_CERT, directory / CA_KEY
    if not force:
        for path in (cert_file, key_file):
            if path.exists():
                raise CertError(f"{path} exists; pass --force to make a new CA")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_file, _key_pem(key), 0o600, force=True)
    _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644, force=True)
    return cert_file, key_file


def load_ca(directory: Path):
    """The CA's certificate and private key from DIR."""
    directory = Path(directory)
    cert_file, key_file = directory / CA_CERT, directory / CA_KEY
    for path in (cert_file, key_file):
        if not path.is_file():
            raise CertError(f"{path} not found; run `splitnn certs init --dir {directory}` first")
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except ValueError as err:
        raise CertError(f"cannot read the CA in {directory}: {err}") from None
    return cert, key


def issue(
    directory: Path,
    name: str,
    dns: list[str] | tuple[str, ...] = (),
    ips: list[str] | tuple[str, ...] = (),
    loopback: bool = True,
    days: int = HOST_DAYS,
    force: bool = False,
) -> Issued:
    """Make DIR/NAME.pem and DIR/NAME.key, signed by the CA in DIR.

    The certificate names NAME, every `dns` name and every `ips` address (plus
    localhost and 127.0.0.1 when `loopback`), and serves both TLS server and client
    authentication.
    """
    _check_name(name)
    directory = Path(directory)
    ca_cert, ca_key = load_ca(directory)
    dns_names = list(dict.fromkeys([name, *dns, *(LOOPBACK_DNS if loopback else ())]))
    ip_texts = list(dict.fromkeys([*ips, *(LOOPBACK_IPS if loopback else ())]))
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ip_texts]
    except ValueError as err:
        raise CertError(f"--ip: {err}") from None
    for dns_name in dns_names:
        if not dns_name or any(c.isspace() for c in dns_name):
            raise CertError(f"--dns: not a DNS name: {dns_name!r}")
    cert_file, key_file = cert_path(directory, name), key_path(directory, name)
    if not force:
        for path in (cert_file, key_file):
            if path.exists():
                raise CertError(f"{path} exists; pass --force to replace it")
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    sans = [x509.DNSName(d) for d in dns_names] + [x509.IPAddress(a) for a in addresses]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_file, _key_pem(key), 0o600, force=True)
    _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644, force=True)
    return Issued(cert_file, key_file, tuple(dns_names), tuple(str(a) for a in addresses))
