"""Run a command and report its wall time and peak memory, split by kind.

    python benchmarks/peak_memory.py -- spikec compile export/ -o model.sbin

Samples /proc/<pid>/status of the command's whole process tree every `--interval`
seconds and reports the peaks of the tree's summed:
- RssAnon: anonymous memory (heap, arrays, onnxruntime's buffers): what the process
  really holds, and what an OOM kill counts first;
- RssFile: file-backed pages of memory-mapped files (weights mapped from a checkpoint,
  an export's data files or a .sbin) and of libraries: clean pages the kernel drops
  under pressure, reported apart;
- VmRSS: their sum (plus shared memory), the figure `ps` and `/usr/bin/time` show.
Sampling can miss a spike shorter than the interval; the kernel's own high-water mark
of the main process (VmHWM) is printed too. Also the CPU time (user + system) of the
whole tree, from the kernel's accounting of reaped children (getrusage(RUSAGE_CHILDREN)
before and after): on a machine shared with other jobs it moves far less than the wall
time, so it is the figure to compare between runs (e.g. time per layer). Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in FIELDS:
                out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for k in kids:
        out.append(int(k))
        out.extend(_children(int(k)))
    return out


def measure(cmd: list[str], interval: float = 0.05, **popen) -> dict:
    """Run `cmd` to completion; returns rc, wall_s, cpu_s (user + system seconds of the
    command and every descendant it waited for) and the peak bytes of each field."""
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, **popen)
    peak = dict.fromkeys(FIELDS, 0)
    while proc.poll() is None:
        total = dict.fromkeys(FIELDS, 0)
        main = _status(proc.pid)
        for pid in [proc.pid, *_children(proc.pid)]:
            s = main if pid == proc.pid else _status(pid)
            for k in ("VmRSS", "RssAnon", "RssFile"):
                total[k] += s.get(k, 0)
        total["VmHWM"] = main.get("VmHWM", 0)
        for k in FIELDS:
            peak[k] = max(peak[k], total[k])
        time.sleep(interval)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "cpu_s": cpu,
            **{f"peak_{k}": v for k, v in peak.items()}}


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=0.05, help="sampling period in seconds (default 0.05)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given (put it after --)")
    r = measure(cmd, args.interval)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"rc {r['rc']}  wall {r['wall_s']:.1f} s  cpu {r['cpu_s']:.1f} s  peak RssAnon {gib(r['peak_RssAnon'])}  "
              f"RssFile {gib(r['peak_RssFile'])}  VmRSS {gib(r['peak_VmRSS'])}  (VmHWM {gib(r['peak_VmHWM'])})",
              file=sys.stderr)
    sys.exit(r["rc"])


if __name__ == "__main__":
    main()
