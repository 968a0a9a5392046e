"""CLI wall times: `python -m benchmarks.cli [--runs 7]` (`make bench-cli`).

Starts a throwaway `bulkhead dev` (embedded Postgres, the demo tenants) in a temp dir, then runs
each command as a person does: the `bulkhead` script, as a subprocess, from another directory,
with no Bulkhead setting in its environment. For each it records the wall time to the first
byte printed (stdout or stderr) and to the exit, and reports the median and the minimum of
`--runs` runs against its target. Operator commands find the instance through `--data-dir`;
`--configured` gives them `DATABASE_URL` and `BULKHEAD_DATA_DIR` instead, the form older
versions understand, so `--python` can time another checkout's interpreter the same way.
The last row times a command on the stopped instance (its Postgres started for the command).

Targets (issue 15): `--help` and `token` exit within 0.5 s; operator commands print their
first output within 1.5 s. The exit status is 1 when a command fails, not when a target is
missed: the figures depend on the machine, read them with its load average (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from app.db.discovery import running_server_url
from app.db.embedded import DATABASE
from benchmarks.report import RESULTS_DIR
from benchmarks.stack import REPO_ROOT, ServerProcess, clean_environment, free_port

Metric = Literal["first", "exit"]
READY_TIMEOUT_SECONDS = 180.0
PROBE_REF = "tenants/demo/bench-cli-probe"


@dataclass(frozen=True, slots=True)
class Command:
    """One command line to time, and what it must achieve."""

    name: str
    args: list[str]
    metric: Metric
    """`first`: time to the first output; `exit`: time until the process has exited."""
    target_seconds: float
    needs_instance: bool = True
    """Takes `--data-dir` (or, with `--configured`, the environment's settings)."""


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds from the start of one run to its first output and to its exit."""

    first: float
    exit: float


@dataclass(frozen=True, slots=True)
class Row:
    """A command's runs, summarised."""

    name: str
    metric: Metric
    target_seconds: float
    first_median: float
    first_min: float
    exit_median: float
    exit_min: float

    @property
    def measured(self) -> float:
        """The median of the metric the target is about."""
        return self.first_median if self.metric == "first" else self.exit_median

    @property
    def met(self) -> bool:
        """Whether the median is within the target."""
        return self.measured <= self.target_seconds


def commands() -> list[Command]:
    """The commands timed while the dev instance runs, in order."""
    manifest = str(REPO_ROOT / "tenants" / "demo.yaml")
    return [
        Command("--help", ["--help"], "exit", 0.5, needs_instance=False),
        Command("token", ["token", "--tenant", "demo", "--user", "alice"], "exit", 0.5),
        Command("keys list", ["keys", "list", "--tenant", "demo"], "first", 1.5),
        Command("audit verify", ["audit", "verify", "--tenant", "demo"], "first", 1.5),
        Command("export", ["export", "--tenant", "demo", "--user", "alice"], "first", 1.5),
        Command(
            "forget", ["forget", "--tenant", "demo", "--user", "nobody", "--yes"], "first", 1.5
        ),
        Command("secrets list", ["secrets", "list", "demo"], "first", 1.5),
        Command("tenants --help", ["tenants", "--help"], "first", 1.5, needs_instance=False),
        Command(
            "tenants apply --dry-run", ["tenants", "apply", "--dry-run", manifest], "first", 1.5
        ),
    ]


STOPPED = Command("keys list (dev stopped)", ["keys", "list", "--tenant", "demo"], "first", 1.5)


def time_once(argv: list[str], *, cwd: Path, env: dict[str, str]) -> Timing:
    """Run `argv`; seconds to its first output and to its exit.

    Raises:
        RuntimeError: The command exited non-zero (its output is in the message).
    """
    started = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first: float | None = None
    output: list[bytes] = []
    with selectors.DefaultSelector() as selector:
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                if first is None:
                    first = time.perf_counter() - started
                output.append(chunk)
    code = process.wait()
    ended = time.perf_counter() - started
    if code != 0:
        text = b"".join(output).decode(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(argv)} exited {code}:\n{text}")
    return Timing(first=ended if first is None else first, exit=ended)


def summarise(command: Command, timings: list[Timing]) -> Row:
    """Median and minimum of the runs' first-output and exit times."""
    firsts = [t.first for t in timings]
    exits = [t.exit for t in timings]
    return Row(
        name=command.name,
        metric=command.metric,
        target_seconds=command.target_seconds,
        first_median=statistics.median(firsts),
        first_min=min(firsts),
        exit_median=statistics.median(exits),
        exit_min=min(exits),
    )


class Bench:
    """Where and how the commands run: the script, a neutral directory, the instance's dir."""

    def __init__(self, script: Path, workdir: Path, *, configured: bool, runs: int) -> None:
        self.script = script
        self.data_dir = workdir / "data"
        self.cwd = workdir / "elsewhere"
        self.cwd.mkdir()
        self.configured = configured
        self.runs = runs

    def argv_env(self, command: Command) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of one run."""
        env = clean_environment()
        argv = [str(self.script), *command.args]
        if not command.needs_instance:
            return argv, env
        if not self.configured:
            return [*argv, "--data-dir", str(self.data_dir)], env
        url = running_server_url(self.data_dir / "pg", DATABASE)
        if url is None:
            raise RuntimeError("--configured needs the dev instance running")
        return argv, env | {"DATABASE_URL": url, "BULKHEAD_DATA_DIR": str(self.data_dir)}

    def measure(self, command: Command) -> Row:
        """Time `command` `runs` times (after one unmeasured run that warms the file cache)."""
        argv, env = self.argv_env(command)
        time_once(argv, cwd=self.cwd, env=env)
        timings = [time_once(argv, cwd=self.cwd, env=env) for _ in range(self.runs)]
        return summarise(command, timings)

    def store_probe_secret(self) -> None:
        """One secret for `secrets list` to print (demo has none of its own)."""
        put = Command(
            "secrets put", ["secrets", "put", PROBE_REF, "--from-env", "PROBE"], "exit", 0
        )
        argv, env = self.argv_env(put)
        time_once(argv, cwd=self.cwd, env=env | {"PROBE": "not-a-real-key"})


def start_dev(python: Path, data_dir: Path, log: Path) -> ServerProcess:
    """`bulkhead dev` on a free port with the repository's demo tenants; wait until ready."""
    port = free_port()
    env = clean_environment() | {
        "BULKHEAD_DATA_DIR": str(data_dir),
        "BULKHEAD_TENANTS_DIR": str(REPO_ROOT / "tenants"),
    }
    command = [str(python), "-m", "app.cli", "dev", "--port", str(port)]
    server = ServerProcess("bulkhead dev", command, env=env, log=log)
    server.wait_ready("/readyz", timeout=READY_TIMEOUT_SECONDS)
    return server


def render(rows: list[Row]) -> str:
    """The table: first output and exit (median / min), the target, met or missed."""
    lines = [
        f"{'command':<26}{'first output':>20}{'exit':>20}   target",
        f"{'':<26}{'median / min':>20}{'median / min':>20}",
    ]
    for row in rows:
        first = f"{row.first_median:.2f} / {row.first_min:.2f} s"
        exit_ = f"{row.exit_median:.2f} / {row.exit_min:.2f} s"
        target = f"{'first output' if row.metric == 'first' else 'exit'} <= {row.target_seconds} s"
        verdict = "met" if row.met else "MISSED"
        lines.append(f"{row.name:<26}{first:>20}{exit_:>20}   {target:<22}{verdict}")
    return "\n".join(lines)


def write_json(rows: list[Row], record: dict[str, object]) -> Path:
    """The run as `benchmarks/results/cli-<UTC timestamp>.json`."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"cli-{stamp}.json"
    rows_json = [asdict(row) | {"met": row.met} for row in rows]
    path.write_text(json.dumps(record | {"rows": rows_json}, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="Measured runs per command.")
    parser.add_argument(
        "--python",
        type=Path,
        default=Path(sys.executable),
        help="Interpreter whose `bulkhead` is timed.",
    )
    parser.add_argument(
        "--configured",
        action="store_true",
        help="Pass DATABASE_URL and BULKHEAD_DATA_DIR instead of --data-dir (older versions).",
    )
    args = parser.parse_args(argv)
    script = args.python.parent / "bulkhead"
    load_before = os.getloadavg()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="bulkhead-bench-"))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bulkhead-cli-bench-") as directory:
        workdir = Path(directory)
        bench = Bench(script, workdir, configured=args.configured, runs=args.runs)
        print(f"starting bulkhead dev in {bench.data_dir} ...", flush=True)
        server = start_dev(args.python, bench.data_dir, workdir / "dev.log")
        try:
            bench.store_probe_secret()
            for command in commands():
                rows.append(bench.measure(command))
                print(render(rows[-1:]).splitlines()[-1], flush=True)
        finally:
            server.stop()
        if not args.configured:
            rows.append(bench.measure(STOPPED))
    load_after = os.getloadavg()
    print()
    print(render(rows))
    print(
        f"\nload average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after;", end=" "
    )
    print(f"{os.cpu_count()} CPUs; {args.runs} runs per command; {script}")
    record = {
        "script": str(script),
        "configured": args.configured,
        "runs": args.runs,
        "load_average": [load_before[0], load_after[0]],
        "cpus": os.cpu_count(),
    }
    print(f"wrote {write_json(rows, record)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
