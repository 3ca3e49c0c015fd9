"""`python -m bench` (`make bench`): measure tsunagu under load against the echo baseline.

Starts both servers under gunicorn with a fake LINE API and a real Redis, runs N = 1, 10, 50,
200 concurrent residents on each (alternately, so both meet the same machine), then 50
residents who pause between taps as people do, then 50 residents while every LINE call takes
100 ms (as the real API's), then LINE hanging; writes bench/results.md and
bench/latency.png and prints the tables and the targets.
Everything is bounded (`--duration` per level, `--budget` for the whole run); logs of the two
servers go to bench/out/.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench import redisbox
from bench.fakeline import BenchLine, serve_line
from bench.figures import Cpu, Figures, HangFigures, Memory, hang_figures, level_figures
from bench.load import LevelRun, Walk, run_hang, run_level
from bench.procs import Server, ServerFailed, local_ports, start_gunicorn
from bench.report import BASE, OURS, Run, document, machine, plot
from bot.store import pseudonym
from tests import line_helpers as lh

HERE = Path(__file__).resolve().parent

HANG_RESIDENTS, HANG_GAP_S = 10, 0.2
# Residents of the level where every LINE call takes --line-ms: N=50, as the main target.
SLOW_LINE_RESIDENTS = 50


@dataclass
class Round:
    """One round of a level on one system: what the residents saw and what it cost."""

    run: LevelRun
    cpu: Cpu
    use: redisbox.Usage | None


def _at_least_one(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return n


def _not_negative(text: str) -> float:
    x = float(text)
    if not x >= 0:  # NaN too
        raise argparse.ArgumentTypeError("must be 0 or more")
    return x


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="1,10,50,200",
                   help="concurrent residents per level, comma-separated (default %(default)s)")
    p.add_argument("--duration", type=float, default=12.0,
                   help="seconds per level and system (default %(default)s)")
    p.add_argument("--rounds", type=_at_least_one, default=2,
                   help="rounds per level and system, in mirrored order (default %(default)s: "
                        "tsunagu, echo, echo, tsunagu); each lasts --duration")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    p.add_argument("--hang-s", type=float, default=3.0, help="how long LINE hangs per call")
    p.add_argument("--hang-duration", type=float, default=6.0,
                   help="seconds of webhooks while LINE hangs")
    p.add_argument("--paced", type=int, default=50,
                   help="also run this many residents who pause between taps (0: skip)")
    p.add_argument("--think", type=float, default=1.0,
                   help="mean pause of a paced resident before each tap, seconds")
    p.add_argument("--line-ms", type=_not_negative, default=100.0,
                   help=f"also run N={SLOW_LINE_RESIDENTS} while the fake LINE API takes this "
                        "many ms per call, as the real one's ~50-200 ms (0: skip; the other "
                        "levels always run with an instant fake)")
    p.add_argument("--budget", type=float, default=540.0,
                   help="whole-run limit in seconds: levels that would pass it are skipped")
    p.add_argument("--own-redis", action="store_true",
                   help="always start a throwaway redis-server (figures nobody else touches)")
    p.add_argument("--cluster", action="store_true",
                   default=os.environ.get("BENCH_CLUSTER", "") not in ("", "0"),
                   help="run against a throwaway local 3+3 Redis Cluster (BENCH_CLUSTER=1); "
                        "results go to results-cluster.md")
    p.add_argument("--out", type=Path, default=HERE, help="where results.md and latency.png go")
    return p.parse_args(argv)


def bench_cpu() -> float:
    t = os.times()
    return t.user + t.system


def person_memory(target: redisbox.RedisTarget, prefix: str, secret: str,
                  walks: list[Walk]) -> Memory:
    """MEMORY USAGE of each walker's session and of every key under their hash tag (found by
    one SCAN, so keys the server adds later are counted too); the pid is recomputed from the
    user id as the server does."""
    pids = {pseudonym(secret, "line", w.user): w for w in walks}
    mine: dict[str, list[str]] = {}
    for raw in target.client.scan_iter(match=f"{prefix}:{{*", count=1000):
        key = raw.decode()
        pid = key[len(prefix) + 2:key.find("}")]
        if pid in pids:
            mine.setdefault(pid, []).append(key)
    keys = [k for group in mine.values() for k in group]
    size = dict(zip(keys, redisbox.memory_usage(target, keys), strict=True))
    sessions, people = [], []
    kinds: dict[str, list[int]] = {}
    for pid, group in mine.items():
        session = size.get(f"{prefix}:{{{pid}}}:session")
        if session is None:
            continue
        sessions.append(session)
        people.append(sum(size[k] or 0 for k in group))
        events = pids[pid].event_ids
        for key in group:
            kind = key.split("}:", 1)[1]
            for event_id in events:
                kind = kind.replace(event_id, "<event>")
            kinds.setdefault(kind, []).append(size[key] or 0)
    people_n = max(1, len(sessions))
    by_kind = {kind: (len(v) / people_n, sum(v) / len(v)) for kind, v in sorted(kinds.items())}
    return Memory(session_bytes=sessions, person_bytes=people, by_kind=by_kind)


class Bench:
    """One run: the servers, the Redis, the fake LINE API and what was measured."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.started = time.monotonic()
        self.notes: list[str] = []
        self.target = redisbox.choose(args.own_redis, cluster=args.cluster)
        self.prefix = f"tsunagu-bench-{uuid.uuid4().hex[:10]}"
        self.secret = secrets.token_hex(32)
        self.line = BenchLine()
        self.httpd, self.line_url = serve_line(self.line)
        self.settings = {
            "WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", "2"),
            "GUNICORN_THREADS": os.environ.get("GUNICORN_THREADS", "8"),
            "LINE_DISPATCH_THREADS": os.environ.get("LINE_DISPATCH_THREADS", "16"),
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        }
        self.servers: list[Server] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings, "REDIS_URL": self.target.url,
                "BOT_SECRET_KEY": self.secret, "REDIS_KEY_PREFIX": self.prefix,
                "LINE_CHANNEL_SECRET": lh.LINE_SECRET,
                "LINE_CHANNEL_ACCESS_TOKEN": "bench-access-token",
                "LINE_API_BASE_URL": self.line_url, "PYTHONUNBUFFERED": "1"}

    def start(self) -> tuple[Server, Server]:
        out = HERE / "out"
        ours = start_gunicorn(OURS, "server:app", self.env(), out / "server.log")
        self.servers.append(ours)
        base = start_gunicorn(BASE, "baseline:app", self.env(), out / "baseline.log",
                              extra=("--pythonpath", "bench"))
        self.servers.append(base)
        return ours, base

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.started)

    def measure(self, server: Server, n: int, redis: bool, think_s: float = 0.0) -> Round:
        """One round of a level on one system. Paced residents (`think_s`) stop where they
        are when the time is up, so their sessions are not weighed (many would be half-way)."""
        cpu0, bench0 = server.cpu_seconds(), bench_cpu()
        ports = local_ports(server.pids()) if redis else set()
        snap0 = redisbox.snapshot(self.target) if redis else None
        run: LevelRun = run_level(server.port, self.line, n, self.args.duration,
                                  grace_s=0.0 if think_s else 30.0, think_s=think_s)
        use = None
        if redis and snap0 is not None:
            ports |= local_ports(server.pids())
            use = redisbox.usage(self.target, snap0, redisbox.snapshot(self.target), ports)
        cpu = Cpu(server=server.cpu_seconds() - cpu0, redis=use.cpu_s if use else None,
                  bench=bench_cpu() - bench0)
        return Round(run, cpu, use)

    def level(self, server: Server, n: int, rounds: list[Round], redis: bool,
              think_s: float = 0.0, line_ms: float = 0.0) -> Figures:
        """A level's figures from its rounds on one system."""
        memory = None
        if redis and not think_s and not line_ms:
            memory = person_memory(self.target, self.prefix, self.secret,
                                   [w for r in rounds for w in r.run.walks])
        uses = [r.use for r in rounds if r.use is not None]
        use = redisbox.combined(uses) if uses else None
        cpu = Cpu(server=sum(r.cpu.server for r in rounds),
                  redis=use.cpu_s if use else None,
                  bench=sum(r.cpu.bench for r in rounds))
        fig = level_figures(server.name, [r.run for r in rounds], cpu, use, memory)
        label = (f"N={n}" + (f" paced {think_s:g} s" if think_s else "")
                 + (f" LINE {line_ms:g} ms" if line_ms else ""))
        by_round = " / ".join(f"{x:.0f}" for x in fig.rounds_per_s)
        print(f"  {server.name:>14} {label:<6} {fig.events_per_s:8.1f} events/s "
              f"({by_round})  p50 {fig.latency_ms['p50']:7.1f} ms  "
              f"p99 {fig.latency_ms['p99']:7.1f} ms  ({fig.sent} events, {fig.unanswered} "
              f"unanswered, {fig.non_200} non-200)", flush=True)
        return fig

    def idle(self, server: Server, seconds: float = 3.0) -> tuple[float, float, str]:
        """Redis commands/s and round trips/s of the idle server: the dispatchers' polling,
        which every level's per-event figures include."""
        ports = local_ports(server.pids())
        before = redisbox.snapshot(self.target)
        time.sleep(seconds)
        after = redisbox.snapshot(self.target)
        use = redisbox.usage(self.target, before, after, ports)
        span = after.at - before.at
        return use.commands / span, use.round_trips / span, use.foreign

    def mirrored(self, ours: Server, base: Server, n: int, first: int) -> dict[str, list[Round]]:
        """A level's rounds in mirrored order (ABBA, then BAAB when `first` is odd): a
        machine that slows down or speeds up during the level weighs on both systems alike."""
        done: dict[str, list[Round]] = {OURS: [], BASE: []}
        order = [(ours, True), (base, False)]
        for r in range(self.args.rounds):
            for server, redis in order if (first + r) % 2 == 0 else order[::-1]:
                done[server.name].append(self.measure(server, n, redis))
                time.sleep(1.0)
        return done

    def slow_line(self, ours: Server, base: Server) -> dict[str, Figures]:
        """N=50 while every LINE call takes --line-ms: the fake's instant answers hide that
        each answer holds a thread for a LINE call — ours one of LINE_DISPATCH_THREADS, the
        echo bot's one of gunicorn's (its webhook waits on LINE)."""
        n, line_ms = SLOW_LINE_RESIDENTS, self.args.line_ms
        self.line.delay_s = line_ms / 1000
        try:
            done = self.mirrored(ours, base, n, 0)
        finally:
            self.line.delay_s = 0.0
        return {server.name: self.level(server, n, done[server.name], redis, line_ms=line_ms)
                for server, redis in ((ours, True), (base, False))}

    def hang(self, server: Server) -> HangFigures:
        self.line.hang_s = self.args.hang_s
        drain_s = min(60.0, max(10.0, self.left() - 30))
        run = run_hang(server.port, self.line, HANG_RESIDENTS, self.args.hang_duration,
                       HANG_GAP_S, drain_s)
        fig = hang_figures(server.name, self.args.hang_s, run)
        print(f"  {server.name:>14} LINE hangs {self.args.hang_s:g} s: webhook p99 "
              f"{fig.webhook_ms['p99']:.1f} ms over {fig.requests} requests; answered after "
              f"recovery {fig.answered_after}/{fig.expected}", flush=True)
        return fig

    def run(self) -> Run:
        levels = [int(x) for x in self.args.levels.split(",") if x.strip()]
        if self.target.cluster is not None:
            self.notes.append("Redis: a local 3+3 Redis Cluster on this machine; commands, "
                              "round trips and Redis CPU are summed over its six nodes (replicas "
                              "included), and other clients are not checked")
        print(f"bench: Redis {self.target.url} ({self.target.source}), key prefix "
              f"{self.prefix}; fake LINE API {self.line_url}", flush=True)
        ours, base = self.start()
        print(f"bench: {OURS} on :{ours.port}, {BASE} on :{base.port}; warming up", flush=True)
        for server in (ours, base):
            run_level(server.port, self.line, 4, self.args.warmup)
        calibration = redisbox.calibrate(self.target)
        idle = self.idle(ours)
        results: dict[str, dict[int, Figures]] = {OURS: {}, BASE: {}}
        hang: list[HangFigures] = []
        reserve = 2 * (self.args.hang_duration + 15)
        rounds = self.args.rounds
        for i, n in enumerate(levels):
            if self.left() < reserve + 2 * rounds * (self.args.duration + 10):
                self.notes.append(f"N={n} skipped: the run's time budget was used up")
                continue
            done = self.mirrored(ours, base, n, i)
            for server, redis in ((ours, True), (base, False)):
                results[server.name][n] = self.level(server, n, done[server.name], redis)
        paced: dict[str, Figures] = {}
        if self.args.paced and self.left() > reserve + 2 * (self.args.duration + 10):
            for server, redis in ((ours, True), (base, False)):
                one = [self.measure(server, self.args.paced, redis, think_s=self.args.think)]
                paced[server.name] = self.level(server, self.args.paced, one, redis,
                                                think_s=self.args.think)
                time.sleep(1.0)
        elif self.args.paced:
            self.notes.append("the paced level was skipped: the run's time budget was used up")
        slow_line: dict[str, Figures] = {}
        if self.args.line_ms and \
                self.left() > reserve + 2 * rounds * (self.args.duration + 10):
            slow_line = self.slow_line(ours, base)
        elif self.args.line_ms:
            self.notes.append(f"the level with LINE taking {self.args.line_ms:g} ms per call was "
                              "skipped: the run's time budget was used up")
        for server in (ours, base):
            if self.left() > self.args.hang_duration + 15:
                hang.append(self.hang(server))
            else:
                self.notes.append(f"LINE-hang scenario for {server.name} skipped: no time left")
        if self.line.unmatched:
            self.notes.append(f"{self.line.unmatched} answers reached the fake LINE API after "
                              "their resident stopped waiting (late or repeated)")
        noisy = [f"N={n}" for n, f in sorted(results[OURS].items()) if f.redis_note]
        if OURS in paced and paced[OURS].redis_note:
            noisy.append("the paced level")
        if OURS in slow_line and slow_line[OURS].redis_note:
            noisy.append("the slow-LINE level")
        if noisy:
            self.notes.append(f"Redis was shared with other clients during {', '.join(noisy)}; "
                              "run with --own-redis for Redis counts nobody else touches")
        return Run(ours=results[OURS], base=results[BASE], hang=hang, paced=paced,
                   think_s=self.args.think,
                   redis_source=self.target.source, redis_version=self.target.version,
                   calibration=calibration, idle=idle,
                   settings={**self.settings, "hang_gap_s": f"{HANG_GAP_S:g}"},
                   duration_s=self.args.duration, rounds=rounds, notes=self.notes,
                   slow_line=slow_line, line_ms=self.args.line_ms)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        try:
            self.target.delete_prefix(self.prefix)
        finally:
            self.target.close()
            self.httpd.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    try:
        run = bench.run()
    except ServerFailed as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.close()
    info = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    text = document(run, info)
    name = "results-cluster" if args.cluster else "results"
    (args.out / f"{name}.md").write_text(text + "\n")
    try:
        plot(run, args.out / ("latency-cluster.png" if args.cluster else "latency.png"))
    except ImportError:
        print("bench: matplotlib is missing (make bench installs it): no plot", file=sys.stderr)
    print()
    print(text.split("\n## Method", 1)[0].rstrip())
    print(f"\nbench: wrote {args.out / (name + '.md')} and its plot "
          f"in {time.monotonic() - bench.started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
