"""Real X.509 certificates for the TLS tests, made with ``cryptography``: a test CA, server
certificates for this machine's addresses, and client certificates whose subject names a DICOM
sender (CN = AE title, O = hospital), signed by the CA or by themselves.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

__all__ = ["CertificateAuthority", "KeyPair", "local_addresses", "non_loopback_address"]


@dataclass(frozen=True)
class KeyPair:
    """A private key and its certificate, as PEM files."""

    key: Path
    certificate: Path


def local_addresses() -> list[str]:
    """Every IPv4 address of this machine's interfaces, loopback first."""
    found = [
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family.name == "AF_INET"
    ]
    return sorted(set(found), key=lambda a: (not ipaddress.ip_address(a).is_loopback, a))


def non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback (the tests connect through it to
    prove what listens beyond loopback); fails, never skips, on a machine without one."""
    for address in local_addresses():
        if not ipaddress.ip_address(address).is_loopback:
            return address
    raise AssertionError("this machine has no non-loopback IPv4 address to test through")


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str, organization: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


class CertificateAuthority:
    """A test CA writing its certificates and keys as PEM files into ``directory``."""

    def __init__(self, directory: Path, name: str = "radcloud test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = _key()
        self._certificate = self._build(_name(name, None), self._key, None, ca=True)
        self.certificate = directory / "ca.crt"
        self.certificate.write_bytes(self._certificate.public_bytes(serialization.Encoding.PEM))

    def _build(
        self,
        subject: x509.Name,
        key: rsa.RSAPrivateKey,
        issuer: CertificateAuthority | None,
        *,
        ca: bool = False,
        addresses: list[str] | None = None,
    ) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer._certificate.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if addresses is not None:
            names: list[x509.GeneralName] = [x509.DNSName("localhost")]
            names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(issuer._key if issuer else key, hashes.SHA256())

    def _write(self, stem: str, key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> KeyPair:
        pair = KeyPair(self.directory / f"{stem}.key", self.directory / f"{stem}.crt")
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pair.key.chmod(0o600)
        pair.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return pair

    def server(self, stem: str = "server") -> KeyPair:
        """A server certificate for ``localhost`` and every address of this machine."""
        key = _key()
        subject = _name("radcloud", None)
        return self._write(stem, key, self._build(subject, key, self, addresses=local_addresses()))

    def client(
        self, stem: str, common_name: str, organization: str | None, *, signed: bool = True
    ) -> KeyPair:
        """A client certificate with subject CN = ``common_name``, O = ``organization``, signed
        by this CA or (``signed=False``) by itself."""
        key = _key()
        subject = _name(common_name, organization)
        return self._write(stem, key, self._build(subject, key, self if signed else None))
