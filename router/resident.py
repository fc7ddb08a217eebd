"""The process's resident set size, for the health monitor's ``--max-memory`` pressure."""

from __future__ import annotations

import os

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATM = "/proc/self/statm"


def resident_bytes() -> int | None:
    """Bytes of the process in RAM now (Linux's ``/proc/self/statm``), or ``None`` where it
    cannot be read. One small read of a kernel file: it does not block the loop."""
    try:
        with open(_STATM, "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None
