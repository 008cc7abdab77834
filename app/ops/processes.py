"""Which process runs a close, told well enough to know, on the same machine, that it ended:
a run left ``running`` by a process killed outright refused every request to close for the
stale time, 30 minutes, and the scheduler resumed nothing (a tester's, ``kill -9``)."""

import os
import socket
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def this_process() -> str:
    """``host boot pid start``: the start (clock ticks since boot, Linux) tells a pid reused
    after the process ended from the process itself. Read each time: a forked child is another
    process."""
    pid = os.getpid()
    return f"{socket.gethostname()} {_boot_id()} {pid} {_started(pid) or ''}"


def ended(owner: str) -> bool:
    """Whether the process ``owner`` names (``this_process()`` of it) has certainly ended: it
    ran on this machine since its last boot and no process of its id and start runs now. One
    of another machine (a Celery worker's host), or one this cannot tell of, has not."""
    host, boot, pid, started = [*owner.split(" "), "", "", "", ""][:4]
    if host != socket.gethostname() or not boot or boot != _boot_id():
        return False
    if not pid.isdigit() or not started:
        return False
    return _started(int(pid)) != started


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _started(pid: int) -> str | None:
    """The process's start in clock ticks since boot (``/proc/<pid>/stat``, field 22); None when
    there is no such process, it has ended and waits for its parent to reap it (a zombie: a
    killed close whose parent never waited stayed "running", a re-verifier's), or there is no
    ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # After the command, which may hold spaces and brackets: the state is field 3.
    fields = stat.rpartition(")")[2].split()
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        return None
    return fields[19]
