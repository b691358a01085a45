"""The lab's application services, the parts that run without a lab: the Host a server
answers by, the self-signed certificate's names, dnsmasq's command line (no upstream, bound to
one address). The servers themselves run in tests/lab/test_app_inline_lab.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from ips.lab.dnsmasq import dnsmasq_argv
from ips.lab.services import host_name
from ips.lab.tlscert import write_self_signed


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("ok.lab", "ok.lab"),
        ("OK.Lab:443", "ok.lab"),
        ("ok.lab.", "ok.lab"),
        ("10.10.2.10", None),
        ("10.10.2.10:8080", None),
        ("[fd00:10:2::10]:80", None),
        ("", None),
        (None, None),
    ],
)
def test_host_name(header: str | None, name: str | None) -> None:
    assert host_name(header) == name


def test_self_signed_certificate_names_every_host(tmp_path: Path) -> None:
    cert_path, key_path = write_self_signed(tmp_path, ["ok.lab", "blocked.lab", "*.bad.lab"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["ok.lab", "blocked.lab", "*.bad.lab"]
    assert key_path.stat().st_mode & 0o777 == 0o600
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)  # the pair matches
    with pytest.raises(ValueError):
        write_self_signed(tmp_path, [])


def test_dnsmasq_serves_only_the_lab_zone_on_one_address() -> None:
    argv = dnsmasq_argv(
        "10.10.2.10",
        {"blocked.lab": ["10.10.2.10", "10.10.2.100"]},
        {"bad.lab": "10.10.2.66"},
        log="/tmp/q.log",
    )
    assert argv[0] == "dnsmasq"
    for option in ("--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--bind-interfaces"):
        assert option in argv
    assert "--listen-address=10.10.2.10" in argv and "--local=/lab/" in argv
    assert [a for a in argv if a.startswith("--host-record")] == [
        "--host-record=blocked.lab,10.10.2.10",
        "--host-record=blocked.lab,10.10.2.100",
    ]
    assert "--address=/bad.lab/10.10.2.66" in argv
    assert "--log-facility=/tmp/q.log" in argv
    assert not any(a.startswith(("--server", "--resolv-file")) for a in argv)
    with pytest.raises(ValueError):
        dnsmasq_argv("not-an-address")
    with pytest.raises(ValueError):
        dnsmasq_argv("10.10.2.10", {"x.lab": ["nope"]})
