"""
What twistchat-bench reads about a process and the machine, from /proc (Linux).

C{cpu_seconds} is the user plus system CPU time a process has used so far;
C{rss_bytes} its resident memory (the C{VmRSS} of C{/proc/PID/status}, read
from C{statm}). Nothing here starts or stops a process.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def available() -> bool:
    """
    Whether this system has the /proc files read here.
    """
    return Path("/proc/self/stat").exists()


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU seconds process C{pid} has used.

    @raise OSError: when there is no such process.
    """
    # After the command name (which may hold spaces): utime and stime are
    # the 12th and 13th fields.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """
    The resident memory of process C{pid}, in bytes.

    @raise OSError: when there is no such process.
    """
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def rss_kib(pid: int) -> int:
    """
    The resident memory of process C{pid}, in KiB (as C{VmRSS} gives it).

    @raise OSError: when there is no such process.
    """
    return rss_bytes(pid) // 1024


def children(pid: int) -> list[int]:
    """
    The process ids of the children of process C{pid}.

    @raise OSError: when there is no such process.
    """
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def machine() -> dict[str, Any]:
    """
    The CPU model, core count, Python version and system, for the report.
    """
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform()}
