"""A stand-in for the ztunnel's listener: accepts one TCP connection on an IP_TRANSPARENT socket.

Run inside the ztunnel namespace. Prints ``ready``, then one JSON line: the peer, the local
address the connection was made to (for a TPROXY'd connection, the original destination), and
the bytes received and, for a NATed connection, its original destination; or ``null`` when nothing arrived within the timeout.
"""

import json
import socket
import struct
import sys

IP_TRANSPARENT = 19
SO_ORIGINAL_DST = 80


def original_dst(conn: socket.socket) -> list | None:
    """Where a REDIRECTed (NATed) connection was headed; None when it was not NATed."""
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, addr = struct.unpack("!2xH4s8x", raw)
    return [socket.inet_ntoa(addr), port]


def main() -> None:
    port, timeout = int(sys.argv[1]), float(sys.argv[2])
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    server.bind(("0.0.0.0", port))
    server.listen(8)
    server.settimeout(timeout)
    print("ready", flush=True)
    try:
        conn, peer = server.accept()
    except socket.timeout:
        print(json.dumps(None), flush=True)
        return
    conn.settimeout(timeout)
    data = conn.recv(100)
    conn.sendall(b"pong")
    print(json.dumps({"peer": list(peer), "local": list(conn.getsockname()), "data": data.decode(),
                      "original_dst": original_dst(conn)}), flush=True)


if __name__ == "__main__":
    main()
