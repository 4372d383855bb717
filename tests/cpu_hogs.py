"""Run a command with CPU-bound processes beside it: does the suite pass on a busy machine?

    python tests/cpu_hogs.py -- bash .ci/run                  # two hogs, at most an hour
    python tests/cpu_hogs.py --hogs 4 --seconds 600 -- pytest tests/test_e2e.py

Each hog spins on one core (at normal priority, like a neighbour's job) until the command ends
or `--seconds` pass, whichever comes first; the exit code is the command's. It prints the load
average before and after, so a note can say how busy the machine was.
"""

import argparse
import multiprocessing
import os
import subprocess
import sys
import time


def spin(until: float) -> None:
    while time.monotonic() < until:
        sum(range(10_000))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=2, help="CPU-bound processes (default 2)")
    parser.add_argument("--seconds", type=float, default=3600, help="their time limit (3600)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    until = time.monotonic() + args.seconds
    hogs = [multiprocessing.Process(target=spin, args=(until,)) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    print(f"cpu_hogs: {args.hogs} hogs for at most {args.seconds:.0f} s; load {os.getloadavg()}")
    started = time.monotonic()
    try:
        code = subprocess.call(command)
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.join()
    print(
        f"cpu_hogs: {' '.join(command)} exited {code} after {time.monotonic() - started:.0f} s; "
        f"load {os.getloadavg()}",
        file=sys.stderr,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
