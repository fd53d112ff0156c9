"""The address students type (or scan) to join: this machine's LAN address, found without
sending anything, and a QR code of it for phones.

Only a server that listens beyond loopback has one: on 127.0.0.1 nobody else can join.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ALL_INTERFACES = ("0.0.0.0", "", "::")
# Any address outside this machine: connect() on a UDP socket only asks the kernel which
# interface would carry a packet there; UDP has no handshake, so nothing is sent.
_PROBE_ADDRESS = ("192.0.2.1", 9)  # TEST-NET-1 (RFC 5737): never a real host


def _usable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_link_local)


def lan_address() -> str | None:
    """This machine's address on the local network, or None when it has none (offline)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_PROBE_ADDRESS)
            address = probe.getsockname()[0]
        if _usable(address):
            return address
    except OSError:  # no route at all (a machine with loopback only)
        pass
    try:  # the addresses the host name resolves to, from /etc/hosts or the local resolver
        candidates = socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        candidates = []
    return next((a for a in candidates if _usable(a)), None)


def join_url(host: str, port: int, *, lan: str | None = None) -> str | None:
    """The URL others open, or None when the server listens on loopback only.

    `host` is the bind address; for all interfaces (0.0.0.0) the LAN address stands in
    (`lan`, else found with lan_address()).
    """
    if host in LOOPBACK_HOSTS:
        return None
    if host in ALL_INTERFACES:
        address = lan or lan_address()
        if address is None:
            logger.warning("serving on %s but this machine has no network address: nobody else can join", host)
            return None
    else:
        address = host
    if ":" in address and not address.startswith("["):  # an IPv6 literal goes in brackets
        address = f"[{address}]"
    return f"http://{address}:{port}/"


def qr_image(url: str, box_size: int = 8) -> Any:
    """A QR code of `url` as a PIL image (black on white), or None without the qrcode package."""
    try:
        import qrcode
    except ImportError:
        logger.warning("the qrcode package is not installed: the join address is shown without a QR code")
        return None
    code = qrcode.QRCode(box_size=box_size, border=2)
    code.add_data(url)
    code.make(fit=True)
    return code.make_image(fill_color="black", back_color="white").get_image().convert("RGB")
