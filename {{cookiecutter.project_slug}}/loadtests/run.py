"""Run the load test headless and report whether the limits held; the exit code is the verdict.

    python loadtests/run.py --host http://127.0.0.1:8080 --duration 60s --keys-file keys.json
    python loadtests/run.py --host http://127.0.0.1:8080 --provision free=2 pro=1x3
    (--provision creates accounts and keys through the CLI, so it needs the DATABASE_URL of that
    environment: `pro=1x3` is one pro account with three keys, which share its budget)

Reports (locust's CSV files and HTML page, and verdict.svg: the verdict drawn) go to
--report-dir. With --provision, keys are created through the service's CLI before the run and
revoked after it.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "{{ cookiecutter.package_name }}"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="base URL, e.g. https://staging.example.com")
    parser.add_argument("--duration", default="60s", help="locust --run-time, e.g. 90s or 5m")
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per second")
    parser.add_argument("--anonymous-users", type=int, default=2)
    parser.add_argument("--health-users", type=int, default=1)
    parser.add_argument("--rps-per-user", type=float, default=2)
    parser.add_argument(
        "--overshoot-tolerance", type=int, default=0, help="extra admissions accepted per window"
    )
    parser.add_argument(
        "--sheddable-plans",
        default="",
        help="plans that may be shed (503) because this run overloads the service on purpose",
    )
    keys = parser.add_mutually_exclusive_group(required=True)
    keys.add_argument("--keys-file", type=Path, help='JSON {"plan": {"account": ["key", ...]}}')
    keys.add_argument(
        "--provision",
        nargs="+",
        metavar="PLAN=ACCOUNTS[xKEYS]",
        help="e.g. free=2 pro=1x3 (one pro account with three keys)",
    )
    parser.add_argument(
        "--report-dir", type=Path, default=Path("reports") / time.strftime("loadtest-%Y%m%d-%H%M%S")
    )
    return parser.parse_args(argv)


def provision(plans: list[str]) -> dict[str, dict[str, list[str]]]:
    done = subprocess.run([*CLI, "loadtest", "provision", *plans], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"provisioning keys failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = json.loads(args.keys_file.read_text()) if args.keys_file else provision(args.provision)
    users = args.anonymous_users + args.health_users
    users += sum(len(keys_of) for accounts in keys.values() for keys_of in accounts.values())
    args.report_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as keys_file:
        json.dump(keys, keys_file)
    env = {
        **os.environ,
        "LOADTEST_KEYS_FILE": keys_file.name,
        "LOADTEST_ANONYMOUS_USERS": str(args.anonymous_users),
        "LOADTEST_HEALTH_USERS": str(args.health_users),
        "LOADTEST_RPS_PER_USER": str(args.rps_per_user),
        "LOADTEST_OVERSHOOT_TOLERANCE": str(args.overshoot_tolerance),
        "LOADTEST_SHEDDABLE_PLANS": args.sheddable_plans,
    }
    command = [
        sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
        "--host", args.host, "--users", str(users), "--spawn-rate", str(args.spawn_rate),
        "--run-time", args.duration, "--stop-timeout", "5", "--only-summary",
        "--csv", str(args.report_dir / "stats"), "--html", str(args.report_dir / "report.html"),
    ]  # fmt: skip
    try:
        verdict = subprocess.run(command, env=env, cwd=HERE).returncode
    finally:
        os.unlink(keys_file.name)
        if args.provision:
            subprocess.run([*CLI, "loadtest", "cleanup"], check=False)
    print(f"reports in {args.report_dir}; verdict: {'PASS' if verdict == 0 else 'FAIL'}")
    return verdict


if __name__ == "__main__":
    sys.exit(main())
