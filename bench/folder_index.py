"""Start-up time and memory of a folder dataset's index (issue 14): a tree of N empty image files
(made once, ``--make``), then ``ImageFolder(root)`` in a fresh process, timed, with the growth of
the process's memory (resident, and peak) over what the import took. Run it against another checkout with PYTHONPATH=OTHER/src to compare.

    python bench/folder_index.py --root /tmp/index1m --make --files 1000000
    python bench/folder_index.py --root /tmp/index1m            # first call scans, the second reads the index
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, os, resource, sys, time
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
from openjepa.data import ImageFolder
before, peak_before = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
ds = ImageFolder(sys.argv[1])
t1 = time.perf_counter()
item_path = str(ds.files[len(ds) // 2])
print(json.dumps({"files": len(ds), "classes": len(ds.classes), "index_s": round(t1 - t0, 2),
                  "rss_growth_mb": round(rss_mb() - before, 1),
                  "peak_rss_growth_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak_before, 1),
                  "sample": item_path}))
"""


def make_tree(root: Path, files: int, per_dir: int = 1000) -> None:
    for d in range((files + per_dir - 1) // per_dir):
        folder = root / f"n{d:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(min(per_dir, files - d * per_dir)):
            os.close(os.open(folder / f"img_{d:05d}_{i:05d}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--make", action="store_true")
    p.add_argument("--files", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    if args.make:
        t0 = time.perf_counter()
        make_tree(args.root, args.files)
        print(f"made {args.files} files in {time.perf_counter() - t0:.0f} s")
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    for run in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.root)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row.update(run=run, cpu=cpu)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
