"""How much memory this process may still use: what guards against OOM kills consult.

`available_bytes()` is the smaller of the kernel's MemAvailable (/proc/meminfo: free
memory plus reclaimable caches, the kernel's own estimate of what can be allocated
without swapping) and, inside a cgroup v2 with a limit, memory.max - memory.current.
None where neither can be read (not Linux): callers then skip their checks.
"""

from __future__ import annotations

from pathlib import Path


def available_bytes() -> int | None:
    """Bytes that can still be allocated without swapping or hitting a cgroup limit, or None."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
