"""`python -m bench.instructions`: CPU instructions per LINE event of one server worker.

`make bench` reports events per second and CPU milliseconds, which move by ±5–10% from run to
run on a shared 2-core machine. Instructions do not: one gunicorn worker (WEB_CONCURRENCY=1, the
same gunicorn.conf.py) runs under `valgrind --tool=callgrind`, a few residents walk the
questionnaire as in `make bench` (bench/load.py, the fake LINE API of bench/fakeline.py), and
callgrind's counters are zeroed after a warm-up and read after the measured walk. The same
figure twice means the same work; a change's cost or saving is then visible at the 1% level.

The measured window also holds what the worker does with no load at all (the dispatchers'
blocking reads and sweeps, the backlog gauge): it is measured alone first, for the same length
of time, and reported beside the total, with the figure per event net of it.

Each system takes several minutes (valgrind runs Python ~50× slower); `--system baseline`
measures the echo bot (bench/baseline.py) the same way. Needs valgrind (a Debian package).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

from bench.__main__ import Bench, parse_args
from bench.load import run_level
from bench.procs import REPO, children, free_port

APPS = {"tsunagu": ("server:app", ()), "baseline": ("baseline:app", ("--pythonpath", "bench"))}


@dataclass
class Count:
    system: str
    events: int
    total: int   # instructions in the loaded window
    idle: int    # instructions in an idle window of the same length

    @property
    def per_event(self) -> float:
        return self.total / max(1, self.events)

    @property
    def net_per_event(self) -> float:
        return (self.total - self.idle) / max(1, self.events)


def _dumped_total(out: str, pid: int) -> int:
    """The instruction total of the worker's newest callgrind dump."""
    files = sorted(glob.glob(f"{out}/cg.{pid}.*"), key=os.path.getmtime)
    with open(files[-1]) as dump:
        for line in dump:
            m = re.match(r"(?:summary|totals): (\d+)", line)
            if m:
                return int(m.group(1))
    raise RuntimeError("callgrind wrote no total")


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, check=False)


def measure(system: str, seconds: float, residents: int, warmup_s: float) -> Count:
    app, extra = APPS[system]
    bench = Bench(parse_args(["--levels", "1"]))
    out = tempfile.mkdtemp(prefix="tsunagu-callgrind-")
    port = free_port()
    env = {**bench.env(), "WEB_CONCURRENCY": "1", "PORT": str(port),
           "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --no-control-socket --timeout 600"}
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--trace-children=yes",
                             f"--callgrind-out-file={out}/cg.%p", gunicorn, *extra, app],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{system} did not start under valgrind") from None
                time.sleep(1)
        run_level(port, bench.line, residents, warmup_s, grace_s=60)
        worker = children(proc.pid)[0]
        _control("-z", str(worker))
        time.sleep(seconds)
        _control("-d", str(worker))
        time.sleep(2)
        idle = _dumped_total(out, worker)
        _control("-z", str(worker))
        run = run_level(port, bench.line, residents, seconds, grace_s=0.0)
        _control("-d", str(worker))
        time.sleep(2)
        total = _dumped_total(out, worker)
        events = sum(len(w.event_ids) for w in run.walks)
        return Count(system, events, total, idle)
    finally:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, 9)
        bench.close()
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions",
                                description=__doc__.splitlines()[0])
    p.add_argument("--system", choices=[*APPS, "both"], default="tsunagu")
    p.add_argument("--seconds", type=float, default=40.0, help="measured window (and idle)")
    p.add_argument("--residents", type=int, default=4)
    p.add_argument("--warmup", type=float, default=20.0)
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench.instructions: valgrind is not installed (apt-get install valgrind)",
              file=sys.stderr)
        return 1
    systems = list(APPS) if args.system == "both" else [args.system]
    print(f"instructions per event, one worker under callgrind, {args.residents} residents, "
          f"{args.seconds:g} s")
    for system in systems:
        c = measure(system, args.seconds, args.residents, args.warmup)
        print(f"  {c.system:<9} {c.events:5d} events  {c.per_event / 1e6:6.3f} M/event  "
              f"(idle window {c.idle / 1e6:8.1f} M; net of it {c.net_per_event / 1e6:6.3f} M)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
