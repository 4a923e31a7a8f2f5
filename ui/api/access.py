"""Whether read routes need a key: private by default once the server listens beyond loopback.

A photo library is private data. ``PHOTODEX_API_REQUIRE_KEY_FOR_READS`` set to true or false always
wins; unset, the address the server binds decides: loopback (127.0.0.0/8, ``::1``, a name resolving
only to those) keeps reads open to this machine, anything else (``0.0.0.0``, ``::``, a LAN address)
needs a read key. ``photodex serve`` hands its ``--host`` to the app as ``PHOTODEX_API_HOST``; an
app started some other way without it decides per request: one that arrived at a non-loopback
local address proves the server listens beyond loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from ui.settings import Settings

log = logging.getLogger(__name__)

OPEN_READS = ("photo metadata, thumbnails and originals, search, similar photos, classify, tags, moderation "
              "policies and decisions, /ask, index job status and /metrics")


def _loopback_ip(text: str) -> bool | None:
    """Whether ``text`` is a loopback IP address; None when it is not an IP address."""
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on this machine only (a name: every address it resolves to is loopback;
    one that does not resolve counts as beyond loopback)."""
    known = _loopback_ip(host)
    if known is not None:
        return known
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(_loopback_ip(str(a)) for a in addresses)


def read_rule(settings: Settings) -> bool | None:
    """Whether reads need a key, decided at start; None when the bind address is unknown (see :func:`reads_need_key`).

    Logs one warning when reads are explicitly opened on a server that may be reachable from elsewhere."""
    bound_loopback = None if settings.api_host is None else is_loopback(settings.api_host)
    explicit = settings.api_require_key_for_reads
    if explicit is False and bound_loopback is not True:
        where = settings.api_host if settings.api_host is not None else "an address not known to photodex"
        log.warning("PHOTODEX_API_REQUIRE_KEY_FOR_READS=false: the API listens on %s and anyone who can reach it "
                    "reads without a key: %s", where, OPEN_READS)
    if explicit is not None:
        return explicit
    return None if bound_loopback is None else not bound_loopback


def reads_need_key(rule: bool | None, local_address: str | None) -> bool:
    """The rule decided at start, else (bind address unknown) whether this request arrived at a non-loopback
    local address (``local_address``: the ASGI scope's ``server`` host; a name such as TestClient's proves nothing)."""
    if rule is not None:
        return rule
    return local_address is not None and _loopback_ip(local_address) is False
