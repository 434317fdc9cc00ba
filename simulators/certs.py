"""Self-signed certificates for the secured OPC UA simulator and its clients.

A simulated source with ``security: sign`` or ``sign_and_encrypt`` needs a server certificate,
and its clients need one of their own that the server trusts. Both are generated here with
``cryptography`` (through asyncua's ``cert_gen`` helpers) into the source's
``certificate_dir`` and reused while they are valid, so a collector started later finds the
client pair where the plant file says:

- ``server-<source>.der`` / ``server-<source>.pem``: the simulator's certificate and key, one
  pair per source (the certificate names the source's application URI);
- the client pair at the plant's ``certificate`` / ``private_key`` when it gives them, else
  ``client.der`` / ``client.pem`` in the folder;
- ``trusted/``: more client certificates (DER or PEM) the simulator accepts.

Files are written to a temporary name and renamed, so a reader never sees half a key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

# asyncua's Client announces this application URI unless told otherwise; a client certificate
# must name it, or asyncua warns on every connection
ASYNCUA_CLIENT_URI = "urn:example.org:FreeOpcUa:opcua-asyncio"
CLIENT_URI = "urn:mieruka:collector"
DEFAULT_CERTIFICATE_DIR = "mieruka-certs"
VALID_DAYS = 3650
_RENEW_BEFORE = datetime.timedelta(days=1)


@dataclass(frozen=True)
class CertificatePair:
    # asyncua picks the format by the file's extension: PEM for ``.pem``, DER otherwise
    cert: Path
    key: Path


def server_app_uri(source_id: str) -> str:
    return f"urn:mieruka:simulator:{source_id}"


def _write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _load_cert(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _usable(pair: CertificatePair, uris: list[str]) -> bool:
    """The pair exists, parses, belongs together, names ``uris`` and is valid for another day."""
    try:
        cert = _load_cert(pair.cert)
        data = pair.key.read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if data.lstrip().startswith(b"-----BEGIN")
               else serialization.load_der_private_key(data, password=None))
    except (OSError, ValueError, TypeError):
        return False
    public = cert.public_key()
    if not isinstance(key, rsa.RSAPrivateKey) or not isinstance(public, rsa.RSAPublicKey) \
            or key.public_key().public_numbers() != public.public_numbers():
        return False
    now = datetime.datetime.now(datetime.UTC)
    if not (cert.not_valid_before_utc <= now and cert.not_valid_after_utc > now + _RENEW_BEFORE):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(uris) <= set(san.get_values_for_type(x509.UniformResourceIdentifier))


def _generate(pair: CertificatePair, common_name: str, uris: list[str], usage: list[x509.ObjectIdentifier]) -> None:
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(socket.gethostname()), x509.DNSName("localhost"),
              x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = cert_gen.generate_self_signed_app_certificate(
        key, common_name, {"organizationName": "mieruka simulator"}, names, extended=usage, days=VALID_DAYS)
    key_format = serialization.Encoding.PEM if pair.key.suffix.lower() == ".pem" else serialization.Encoding.DER
    _write_atomic(pair.key, key.private_bytes(key_format, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()), private=True)
    cert_format = serialization.Encoding.PEM if pair.cert.suffix.lower() == ".pem" else serialization.Encoding.DER
    _write_atomic(pair.cert, cert.public_bytes(cert_format))


def ensure_server_certificate(folder: Path, source_id: str) -> CertificatePair:
    """The simulator's certificate and key for ``source_id`` in ``folder``, made if missing."""
    pair = CertificatePair(folder / f"server-{source_id}.der", folder / f"server-{source_id}.pem")
    uris = [server_app_uri(source_id)]
    if not _usable(pair, uris):
        _generate(pair, f"mieruka simulator {source_id}", uris, [ExtendedKeyUsageOID.SERVER_AUTH])
    return pair


def ensure_client_certificate(cert: Path, key: Path) -> CertificatePair:
    """A client certificate and key at these paths, made if missing. It names both the
    mieruka collector's and asyncua's default application URI."""
    pair = CertificatePair(cert, key)
    uris = [CLIENT_URI, ASYNCUA_CLIENT_URI]
    if not _usable(pair, uris):
        _generate(pair, "mieruka client", uris, [ExtendedKeyUsageOID.CLIENT_AUTH])
    return pair


def trusted_certificates(folder: Path) -> list[x509.Certificate]:
    """Certificates in ``folder/trusted`` (DER or PEM); unreadable files are skipped."""
    out: list[x509.Certificate] = []
    trusted = folder / "trusted"
    if not trusted.is_dir():
        return out
    for p in sorted(trusted.iterdir()):
        if p.is_file():
            try:
                out.append(_load_cert(p))
            except (OSError, ValueError):
                continue
    return out


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def load_certificate(path: Path) -> x509.Certificate:
    return _load_cert(path)
