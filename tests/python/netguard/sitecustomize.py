"""Refuses, and records, every network connection a client test makes beyond this machine.

The client tests put this folder on PYTHONPATH, so Python imports it at start-up in the test script and in
every Python process the script starts (the `llm` CLI). A DNS lookup of another host or a connection to an
address outside 127.0.0.0/8 and ::1 raises OSError at once (CI reaches no other host, and a silent wait for a
timeout would hide the attempt) and appends one line, "EVENT TARGET", to $BITNET_NETGUARD_LOG, which the Rust
test requires to be empty: a client that swallows the error is still caught.
"""

import ipaddress
import os
import sys

_LOG = os.environ.get("BITNET_NETGUARD_LOG")
_LOCAL_NAMES = {"localhost", "localhost.localdomain"}


def _is_local(host):
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is None or host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(event, target):
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as f:
            f.write(f"{event} {target!r} (pid {os.getpid()}, {sys.argv[0]})\n")
    raise OSError(f"netguard: {event} to {target!r} refused: the client tests use only 127.0.0.1")


def _hook(event, args):
    if event == "socket.getaddrinfo":
        if not _is_local(args[0]):
            _refuse(event, args[0])
    elif event == "socket.connect":
        address = args[1]
        # AF_UNIX paths are strings; inet addresses are tuples (host, port, ...).
        if isinstance(address, tuple) and not _is_local(address[0]):
            _refuse(event, address[0])


if _LOG is not None:
    sys.addaudithook(_hook)
