"""A self-signed certificate for the lab's TLS and QUIC servers, valid for several names:

    python -m ips.lab.tlscert DIR ok.lab blocked.lab '*.bad.lab'

writes DIR/lab.pem (the certificate) and DIR/lab.key (its P-256 private key, mode 0600) and
prints their paths. The first name is the subject's common name; every name is a DNS
subjectAltName. Clients in the lab trust nothing: they pass `-k` (curl) or skip verification.
The certificate is valid from an hour ago for a week, so a clock a little off does not matter.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LAB_NAMES = ("ok.lab", "blocked.lab", "good.lab", "*.bad.lab", "bad.lab")


def write_self_signed(
    directory: Path | str, names: Sequence[str] = LAB_NAMES, stem: str = "lab"
) -> tuple[Path, Path]:
    """Write DIRECTORY/STEM.pem and DIRECTORY/STEM.key; return their paths."""
    if not names:
        raise ValueError("a certificate needs at least one name")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    # The clock is read here, at the edge (a lab tool), never in the engine.
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ips.lab.tlscert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("directory")
    ap.add_argument("names", nargs="*", help=f"default: {' '.join(LAB_NAMES)}")
    args = ap.parse_args(argv)
    cert, key = write_self_signed(args.directory, args.names or LAB_NAMES)
    print(cert)
    print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
