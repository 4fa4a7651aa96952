"""Run every benchmark and write their tables to ``bench/RESULTS.md``.

    python bench/run_all.py            # the full runs (about 20 minutes on 2 cores)
    python bench/run_all.py --quick    # every bench with --quick (about 5 minutes)

Each benchmark prints its table last, after a blank line; that part is kept.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import load_average, machine_info  # noqa: E402

BENCHES: list[tuple[str, str, list[str]]] = [
    ("End-to-end overhead", "overhead.py", []),
    (
        "Control: the same method with both sides the bare app (A/A), the noise",
        "overhead.py",
        ["--only", "uploads", "--control"],
    ),
    (
        "End-to-end overhead of uploads without StringZilla (bytes.find)",
        "overhead.py",
        ["--only", "uploads", "--search", "bytes.find"],
    ),
    ("Peak RSS and store writes, 1 GiB upload", "rss_writes.py", []),
    ("Poll endpoint throughput", "poll_throughput.py", []),
    ("100 concurrent uploads, polled", "concurrent_uploads.py", []),
    (
        "100 concurrent uploads, polled: the flash crowd (all start, and end, within 2 s)",
        "concurrent_uploads.py",
        ["--stagger", "2"],
    ),
    (
        "100 concurrent uploads, polled, twice the rate",
        "concurrent_uploads.py",
        ["--rate", "320", "--stagger", "5", "--repeat", "1"],
    ),
    ("Observer vs. multipart parsers", "observer_parsers.py", []),
    ("Where the time goes: the middleware's own cost, no HTTP", "hot_path.py", []),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=os.path.join(HERE, "RESULTS.md"))
    args = parser.parse_args()
    extra = ["--quick"] if args.quick else []
    sections = []
    for title, script, options in BENCHES:
        command = ["python", f"bench/{script}", *options, *extra]
        print("$", " ".join(command), flush=True)
        load_before = load_average()
        result = subprocess.run(
            [sys.executable, os.path.join(HERE, script), *options, *extra],
            capture_output=True,
            text=True,
            check=False,
        )
        print(result.stdout[-3000:], result.stderr[-2000:], sep="\n", flush=True)
        if result.returncode != 0:
            body = f"FAILED (exit {result.returncode}):\n\n```\n{result.stderr[-2000:]}\n```"
        else:
            body = result.stdout.rstrip().rsplit("\n\n", 1)[-1]
        sections.append(
            f"## {title}\n\n`{' '.join(command)}` (load average before: {load_before})\n\n{body}\n"
        )
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        "# Benchmark results\n\n"
        f"Measured {now} on: {machine_info()}.\n\n"
        "The machine is shared (other jobs may run): each section gives the load average it "
        "started under, and A/B runs are interleaved so that load hits both sides alike. "
        "How each bench works and how to read it: `bench/README.md`.\n"
    )
    with open(args.output, "w") as f:
        f.write(header + "\n" + "\n".join(sections))
    print("wrote", args.output)


if __name__ == "__main__":
    main()
