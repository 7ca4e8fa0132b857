"""Certificates for OPC UA message security: the connector's own, and the trust list.

OPC UA secures a connection in both directions with application instance
certificates (Part 2, Part 4 §6.1). This module holds the plain functions behind
the ``edgewatch opcua certificate`` and ``edgewatch opcua trust`` commands and
the check the connector applies before it opens a secure channel:

- :func:`create_certificate` makes the connector's self-signed certificate
  (DER) and private key (PEM);
- :func:`fetch_server_certificate` asks a server for the certificate of one of
  its endpoints (over an unsecured discovery channel, which every server offers);
- :func:`check_trusted` decides whether a (server or client) certificate is in the
  trust folder (the exact certificate, or one issued by a CA certificate in it);
- :func:`trust_server_certificate` copies a certificate into the trust folder;
- :func:`save_rejected_certificate` keeps a refused certificate next to the
  trust folder (``<trust_dir>/../rejected/``) so an operator can inspect it and
  move it into the trust folder.

Trust is explicit on purpose: a connector that accepts any server certificate
would hand process data (and the user's password) to whoever answers on the
address, which is exactly what message security is there to prevent.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_log = logging.getLogger(__name__)

#: policy names of the configuration -> asyncua security policy class names.
POLICY_CLASS_NAMES = {
    "None": "SecurityPolicyNone",
    "Basic256Sha256": "SecurityPolicyBasic256Sha256",
    "Aes256Sha256RsaPss": "SecurityPolicyAes256Sha256RsaPss",
}
_CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


class CertificateError(ValueError):
    """A certificate or key file is missing, unreadable or unusable. The text says which and why."""


@dataclass(frozen=True)
class TrustDecision:
    """The outcome of checking a server certificate against the trust folder."""

    trusted: bool
    #: why, in words: "listed in <file>", "issued by <CA file>", "not in <dir>", "expired on ...".
    reason: str


def thumbprint_sha1(der: bytes) -> str:
    """The SHA-1 thumbprint OPC UA tools show for a certificate (hex, colon separated)."""
    digest = hashlib.sha1(der).hexdigest().upper()  # noqa: S324 - a thumbprint, not a security hash
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def describe_certificate(der: bytes) -> str:
    """Subject and validity of a certificate, for log lines and error messages."""
    cert = x509.load_der_x509_certificate(der)
    return f"subject {cert.subject.rfc4514_string()}, valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"


def load_certificate_file(path: str | Path) -> bytes:
    """Read a certificate file (DER or PEM, by content) and return its DER bytes."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"certificate file {path} does not exist (create one with `edgewatch opcua certificate`)") from None
    except OSError as exc:
        raise CertificateError(f"certificate file {path} cannot be read: {exc.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
        return x509.load_der_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    except ValueError as exc:
        raise CertificateError(f"{path} is not a DER or PEM X.509 certificate: {exc}") from None


def load_private_key_file(path: str | Path, password: str | None = None):
    """Read a private key (PEM or DER, by content), decrypting it with ``password`` if given."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"private key file {path} does not exist (create one with `edgewatch opcua certificate`)") from None
    except OSError as exc:
        raise CertificateError(f"private key file {path} cannot be read: {exc.strerror}") from None
    secret = password.encode() if password is not None else None
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=secret)
        return serialization.load_der_private_key(data, password=secret)
    except TypeError as exc:  # password given for an unencrypted key, or missing for an encrypted one
        hint = "it is encrypted: set private_key_password_env" if password is None else "it is not encrypted: remove private_key_password_env"
        raise CertificateError(f"private key {path} cannot be loaded, {hint} ({exc})") from None
    except ValueError:
        if password is not None:
            raise CertificateError(f"private key {path} cannot be decrypted: wrong password (private_key_password_env), or not a key file") from None
        raise CertificateError(f"{path} is not a PEM or DER private key") from None


def create_certificate(
    cert_path: str | Path,
    key_path: str | Path,
    application_uri: str,
    hostname: str | None = None,
    *,
    key_password: str | None = None,
    days: int = 365 * 2,
) -> tuple[Path, Path]:
    """Create a self-signed application instance certificate (DER) and its RSA 2048 key (PEM).

    The certificate names ``application_uri`` as a URI SubjectAltName, which OPC UA
    servers compare with the ApplicationUri the client presents (keep it equal to
    the connection's ``application_uri``), and ``hostname`` (default: this
    machine's) as a DNS name. It allows client and server authentication (the
    simulator serves with one made here). The key is written with mode
    0600 and encrypted when ``key_password`` is given. Existing files are
    overwritten: a new certificate must be trusted again by every server.

    Returns ``(cert_path, key_path)``.
    """
    from asyncua.crypto import cert_gen

    cert_path, key_path = Path(cert_path), Path(key_path)
    hostname = hostname or socket.gethostname()
    key = cert_gen.generate_private_key()
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    names = [x509.UniformResourceIdentifier(application_uri), x509.DNSName(hostname)]
    # CN "<application>@<host>": what a server's list of (rejected) client certificates shows.
    common_name = f"{application_uri.rsplit(':', 1)[-1] or application_uri}@{hostname}"
    cert = cert_gen.generate_self_signed_app_certificate(key, common_name, {}, names, extended=usage, days=days)
    encryption = (
        serialization.BestAvailableEncryption(key_password.encode()) if key_password else serialization.NoEncryption()
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    _log.info("created OPC UA certificate %s (%s, thumbprint sha1 %s) and key %s", cert_path, application_uri,
              thumbprint_sha1(cert_path.read_bytes()), key_path)
    return cert_path, key_path


def load_trusted(trust_dir: str | Path) -> dict[Path, bytes]:
    """The certificates in the trust folder: ``{file: DER}``. A missing folder is empty.

    Files that are not certificates are skipped with a warning, so one stray file
    does not lock the connector out of every server.
    """
    trust_dir = Path(trust_dir)
    found: dict[Path, bytes] = {}
    if not trust_dir.is_dir():
        return found
    for path in sorted(trust_dir.iterdir()):
        if not path.is_file() or path.suffix.lower() not in _CERT_SUFFIXES:
            continue
        try:
            found[path] = load_certificate_file(path)
        except CertificateError as exc:
            _log.warning("skipping %s in the OPC UA trust folder: %s", path, exc)
    return found


def check_trusted(der: bytes, trust_dir: str | Path, now: _dt.datetime | None = None) -> TrustDecision:
    """Is this certificate (a server's, or for the simulator a client's) trusted by ``trust_dir``?

    Trusted means: the certificate itself is in the folder (the usual case for
    self-signed PLC certificates), or it was issued by a CA certificate in the
    folder (a plant PKI). Either way it must be inside its validity period.
    Revocation lists are not consulted.
    """
    now = now or _dt.datetime.now(_dt.timezone.utc)
    cert = x509.load_der_x509_certificate(der)
    if cert.not_valid_after_utc < now:
        return TrustDecision(False, f"it expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        return TrustDecision(False, f"it is not valid before {cert.not_valid_before_utc:%Y-%m-%d} (check the clocks)")
    trusted = load_trusted(trust_dir)
    for path, trusted_der in trusted.items():
        if trusted_der == der:
            return TrustDecision(True, f"listed in {path}")
    for path, trusted_der in trusted.items():
        issuer = x509.load_der_x509_certificate(trusted_der)
        if issuer.subject != cert.issuer or issuer.subject == cert.subject:
            continue
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):  # not issued by this CA
            continue
        return TrustDecision(True, f"issued by the CA in {path}")
    return TrustDecision(False, f"it is not in the trust folder {trust_dir}")


def _file_stem(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(names[0].value)) if names else "certificate"
    return f"{name[:60]}_{hashlib.sha1(der).hexdigest()[:16]}"  # noqa: S324 - a file name


def trust_server_certificate(der: bytes, trust_dir: str | Path) -> Path:
    """Add a server certificate (DER bytes) to the trust folder; return the file written.

    Idempotent: trusting the same certificate twice writes the same file. A copy
    of it in the rejected folder next to the trust folder is removed.
    """
    trust_dir = Path(trust_dir)
    trust_dir.mkdir(parents=True, exist_ok=True)
    path = trust_dir / f"{_file_stem(der)}.der"
    path.write_bytes(der)
    rejected = rejected_dir(trust_dir) / path.name
    if rejected.exists():
        rejected.unlink()
    _log.info("trusted OPC UA server certificate %s (thumbprint sha1 %s)", path, thumbprint_sha1(der))
    return path


def rejected_dir(trust_dir: str | Path) -> Path:
    """Where refused server certificates are kept: ``<trust_dir>/../rejected``."""
    return Path(trust_dir).resolve().parent / "rejected"


def save_rejected_certificate(der: bytes, trust_dir: str | Path) -> Path:
    """Keep a refused server certificate for inspection; return its path.

    Moving the file into the trust folder is the manual way to trust it.
    """
    folder = rejected_dir(trust_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_file_stem(der)}.der"
    path.write_bytes(der)
    return path


def policy_uri(policy: str) -> str:
    """The SecurityPolicyUri of a configured policy name."""
    from asyncua.crypto import security_policies

    return getattr(security_policies, POLICY_CLASS_NAMES[policy]).URI


def first_certificate(der_chain: bytes) -> bytes:
    """The leading certificate of a DER blob that may carry its issuer chain after it."""
    if not der_chain:
        return b""
    # DER SEQUENCE: 0x30, then a short (< 0x80) or long-form length.
    length_byte = der_chain[1]
    if length_byte < 0x80:
        return der_chain[: 2 + length_byte]
    count = length_byte & 0x7F
    length = int.from_bytes(der_chain[2 : 2 + count], "big")
    return der_chain[: 2 + count + length]


async def fetch_server_certificate(endpoint: str, policy: str = "Basic256Sha256", mode: str = "SignAndEncrypt", timeout_s: float = 4.0) -> bytes:
    """Ask the server at ``endpoint`` for the certificate of its ``policy``/``mode`` endpoint (DER).

    Uses GetEndpoints over an unsecured channel, which servers offer for
    discovery even when they refuse unsecured sessions. For policy "None" the
    certificate of any endpoint is returned (servers may have none: then b"").
    Raises ``LookupError`` naming the endpoints the server does offer when none matches.
    """
    from asyncua import Client, ua

    client = Client(endpoint, timeout=timeout_s)
    endpoints = await client.connect_and_get_server_endpoints()
    if policy == "None":
        for ep in endpoints:
            if ep.ServerCertificate:
                return first_certificate(ep.ServerCertificate)
        return b""
    uri = policy_uri(policy)
    wanted_mode = getattr(ua.MessageSecurityMode, mode)
    for ep in endpoints:
        if ep.SecurityPolicyUri == uri and ep.SecurityMode == wanted_mode:
            if not ep.ServerCertificate:
                raise LookupError(f"the {policy}/{mode} endpoint of {endpoint} carries no server certificate")
            return first_certificate(ep.ServerCertificate)
    offered = sorted({f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/{ep.SecurityMode.name.rstrip('_')}" for ep in endpoints})
    raise LookupError(f"{endpoint} offers no endpoint with security {policy}/{mode} (it offers: {', '.join(offered) or 'none'})")
