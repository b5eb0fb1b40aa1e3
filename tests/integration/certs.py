"""Certificates the tests make themselves, for brokers served over TLS (openssl, a day's life)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.integration.procs import HOST


@dataclass(frozen=True)
class Tls:
    """The CA and the server's certificate (for 127.0.0.1) that it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_certificates(out: Path, server: str) -> Tls:
    """A CA and a certificate for a server named ``server`` at 127.0.0.1, in ``out`` (made)."""
    out.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=out, check=True, capture_output=True)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", f"/CN={server}-test-ca")  # fmt: skip
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={server}")
    (out / "san.ext").write_text(f"subjectAltName=IP:{HOST}\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext",
    )  # fmt: skip
    for key in ("ca.key", "server.key"):
        (out / key).chmod(0o644)  # a server may run as whoever runs the tests
    return Tls(out / "ca.crt", out / "server.crt", out / "server.key")
