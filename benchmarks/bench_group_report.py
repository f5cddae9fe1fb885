"""Time to render the group report from an existing OUTPUT_DIR (what ``group --report-only`` does).

    .venv/bin/python benchmarks/bench_group_report.py BIDS_DIR OUTPUT_DIR [--repeat 2]

Prints the wall and CPU seconds of each render and the report size. The report test in
``tests/test_group_report.py`` checks content only; this is where its speed is measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from qsm_bids.report.group import write_group_report_from_files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bids_dir", type=Path)
    ap.add_argument("output_dir", type=Path)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs visible; load average {os.getloadavg()[0]:.2f}")
    for i in range(args.repeat):
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        path = write_group_report_from_files(args.output_dir, args.bids_dir)
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(f"render {i + 1}: {w1 - w0:.1f} s wall, {cpu:.1f} s CPU, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
