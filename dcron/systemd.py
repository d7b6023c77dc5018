"""Telling systemd about the node's state: the sd_notify datagram protocol.

Under ``Type=notify`` systemd passes the path of a datagram socket in
``$NOTIFY_SOCKET`` and waits for ``READY=1`` before it counts the service as
started; ``STOPPING=1`` says a clean shutdown has begun and ``STATUS=...`` is
shown by ``systemctl status``. A message is newline-separated ``KEY=VALUE``
assignments in one datagram. A path starting with ``@`` names a socket in the
abstract namespace (the ``@`` stands for a leading NUL byte).

Jobs must not inherit the socket: a job that speaks the protocol itself would
report its own readiness as the node's. ``claim_socket`` moves the address out
of the environment into this module once, before any job starts.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"

# The address taken out of the environment by claim_socket, if any.
_claimed: str | None = None


def claim_socket() -> None:
    """Take ``$NOTIFY_SOCKET`` out of the environment that jobs inherit.

    ``notify`` keeps using the address. Calling it again is harmless.
    """
    global _claimed
    address = os.environ.pop(NOTIFY_SOCKET, None)
    if address:
        _claimed = address


def notify(message: str) -> bool:
    """Send one sd_notify message, e.g. ``"READY=1"`` or ``"STOPPING=1"``.

    Returns True when the datagram was sent; False when the process does not
    run under a notify-aware supervisor or the socket cannot take it. Never
    raises: telling systemd is best effort and must not stop the node.
    """
    address = os.environ.get(NOTIFY_SOCKET) or _claimed
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        # systemd also speaks vsock (vsock:CID:PORT) for VMs; not used here.
        logger.debug("notify socket %s is not a unix socket path", address)
        return False

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        logger.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), exc)
        return False
    return True
