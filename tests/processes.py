"""For tests that run the ``loanwatch`` command in a process of its own."""

import os
import socket
import sys
from pathlib import Path

LOANWATCH = str(Path(sys.executable).with_name("loanwatch"))


def clean_env() -> dict[str, str]:
    """This environment without its LOANWATCH_ settings: the command's defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LOANWATCH_")}


def free_port() -> int:
    """A free loopback port, for a server a test starts (a receiver, the API, a broker)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
