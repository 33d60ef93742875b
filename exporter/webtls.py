"""TLS of `--web.config.file` (exporter/webconfig.py reads the file): an
`ssl.SSLContext` that does what exporter-toolkit's `tls_server_config` means, or a
`TLSError` naming the key where Python's `ssl` cannot (`RequireAnyClientCert`: a
client certificate required but not verified; more than one curve).

Certificates and keys reach OpenSSL through a memfd (inline ones never touch a disk);
without a client CA, client certificates are verified against the system's roots, as Go
does. A context serves every connection that arrives while its file is in force
(exporter/guard.py hands each handshake the one in force then).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"": ssl.CERT_NONE, "NoClientCert": ssl.CERT_NONE,
               # requested but never verified nor required: for access, the same as not
               # asking (nothing here reads an unverified certificate)
               "RequestClientCert": ssl.CERT_NONE,
               "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
UNVERIFIED_REQUIRED = {"RequireAnyClientCert", "RequireClientCert"}
# The names Go's tls.CipherSuites() knows, to OpenSSL's; TLS 1.3 suites (None) cannot be
# chosen in Go either: listing them changes nothing for TLS 1.3.
CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1",
          "X25519": "X25519"}


class TLSError(ValueError):
    pass


@dataclass(frozen=True)
class TLSSettings:
    """tls_server_config's values as the file gives them (PEM already read)."""
    cert: bytes
    key: bytes
    client_ca: bytes | None = None
    client_auth: str = ""
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: list[str] | None = None
    prefer_server: bool | None = None
    curves: list[str] | None = None
    allowed_sans: list[str] | None = None


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("gunicorn-exporter-tls", os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


def _load_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    fds = [_memfd(cert), _memfd(key)]
    try:
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}",
                            password=lambda: b"")
    except (OSError, ssl.SSLError) as e:
        raise TLSError("tls_server_config: cannot load cert_file/key_file (or cert/key): "
                             f"{e}") from None
    finally:
        for fd in fds:
            os.close(fd)


def context(s: TLSSettings, warnings: list[str]):
    """(SSLContext, allowed SANs or None) as exporter-toolkit's ConfigToTLSConfig means
    them; TLSError naming the key when Python's ssl cannot do what it asks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, s.cert, s.key)
    for k, name in (("min_version", s.min_version), ("max_version", s.max_version)):
        if name not in TLS_VERSIONS:
            raise TLSError(f"tls_server_config.{k} must be one of {', '.join(TLS_VERSIONS)}")
    ctx.minimum_version = TLS_VERSIONS[s.min_version]
    ctx.maximum_version = TLS_VERSIONS[s.max_version]
    _ciphers(ctx, s.cipher_suites)
    if ctx.minimum_version > ctx.maximum_version:
        warnings.append("tls_server_config: min_version is above max_version (or only TLS 1.3 "
                        "cipher suites are listed): every TLS handshake will fail")
    if s.prefer_server is not False:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _curves(ctx, s.curves)
    sans = s.allowed_sans
    _client_auth(ctx, s.client_auth, s.client_ca, warnings, sans is not None)
    if sans is not None and ctx.verify_mode == ssl.CERT_NONE:
        warnings.append("client_allowed_sans without a verified client certificate: every "
                        "client is refused")
    if sans is not None and not sans:
        warnings.append("client_allowed_sans is an empty list: every client is refused")
    return ctx, None if sans is None else frozenset(normalise_san(x) for x in sans)

def _ciphers(ctx: ssl.SSLContext, suites: list[str] | None) -> None:
    if not suites:
        return
    names = []
    for s in suites:
        if s not in CIPHERS:
            raise TLSError(f"tls_server_config.cipher_suites: unknown cipher {s[:60]!r}")
        if CIPHERS[s]:
            names.append(CIPHERS[s])
    if not names:   # TLS 1.3 suites only: as in Go, nothing is left for TLS 1.2 and below
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return
    try:
        ctx.set_ciphers(":".join(names))
    except ssl.SSLError as e:
        raise TLSError(f"tls_server_config.cipher_suites: {e}") from None


def _curves(ctx: ssl.SSLContext, curves: list[str] | None) -> None:
    if not curves:
        return
    for c in curves:
        if c not in CURVES:
            raise TLSError(f"tls_server_config.curve_preferences: unknown curve {c[:60]!r} "
                                 f"(one of {', '.join(CURVES)})")
    if len(curves) > 1:
        raise TLSError("tls_server_config.curve_preferences: Python's ssl can limit the "
                             "handshake to one curve but not offer a list in order; give one "
                             "curve, or none for OpenSSL's defaults")
    ctx.set_ecdh_curve(CURVES[curves[0]])


def _client_auth(ctx, mode: str, ca: bytes | None, warnings: list[str], with_sans: bool) -> None:
    if mode in UNVERIFIED_REQUIRED:
        raise TLSError(f"tls_server_config.client_auth_type {mode}: Python's ssl cannot "
                             "require a client certificate without verifying it; use "
                             "RequireAndVerifyClientCert with client_ca_file")
    if mode not in CLIENT_AUTH:
        raise TLSError("tls_server_config.client_auth_type must be one of "
                             "NoClientCert, RequestClientCert, RequireAnyClientCert, "
                             "VerifyClientCertIfGiven, RequireAndVerifyClientCert")
    if mode == "RequestClientCert" and with_sans:
        raise TLSError("tls_server_config: client_allowed_sans with client_auth_type "
                             "RequestClientCert would check certificates nobody verified; "
                             "Python's ssl cannot read those: use VerifyClientCertIfGiven or "
                             "RequireAndVerifyClientCert")
    ctx.verify_mode = CLIENT_AUTH[mode]
    if ca is not None and ctx.verify_mode == ssl.CERT_NONE:
        raise TLSError("tls_server_config: a client CA is configured without a client "
                             "auth policy (client_auth_type)")
    if ctx.verify_mode == ssl.CERT_NONE:
        return
    if ca is None:
        ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)   # the system's roots, as Go does
        return
    try:
        ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
    except ssl.SSLError:
        warnings.append("the client CA (client_ca_file/client_ca) holds no certificate: every "
                        "client certificate will be refused")


def describe_tls(ctx: ssl.SSLContext | None) -> str:
    if ctx is None:
        return "plain HTTP"
    clients = {ssl.CERT_NONE: "no client certificate", ssl.CERT_OPTIONAL:
               "client certificates verified if given", ssl.CERT_REQUIRED:
               "client certificate required"}[ctx.verify_mode]
    return f"TLS {ctx.minimum_version.name}-{ctx.maximum_version.name}, {clients}"


def normalise_san(value: str) -> str:
    """A SAN as Go prints it: IP addresses in their shortest form, the rest as given."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def peer_sans(ssl_object) -> set[str]:
    """Subject alternative names of a verified client certificate (empty if none)."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    return {normalise_san(v) for _k, v in (cert or {}).get("subjectAltName", ())}
