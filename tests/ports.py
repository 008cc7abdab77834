"""A free loopback port, for a server a test starts (a receiver, `loanwatch serve`, a broker)."""

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
