"""From raw samples and counters to the figures of one level, for one system."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.load import HangRun, LevelRun
from bench.redisbox import Usage
from bench.stats import mean, percentile

MS = 1000.0


@dataclass
class Cpu:
    """CPU seconds used during a level, per part of the machine."""

    server: float
    redis: float | None
    bench: float


@dataclass
class Memory:
    """What the level's residents left in Redis."""

    session_bytes: list[int]   # MEMORY USAGE of each <prefix>:{pid}:session
    person_bytes: list[int]    # all keys under one person's hash tag
    by_kind: dict[str, tuple[float, float]] = field(default_factory=dict)  # keys/person, bytes


@dataclass
class Figures:
    """Every figure of one level for one system (per event unless named otherwise)."""

    system: str
    n: int
    sent: int
    answered: int
    non_200: int
    unanswered: int
    walks: int
    complete_walks: int
    results_walks: int
    wall_s: float
    events_per_s: float
    latency_ms: dict[str, float]
    webhook_ms: dict[str, float]
    cpu_ms_per_event: float
    cores: dict[str, float]
    # Server, Redis and load generator together: on a machine they saturate, events/s is
    # about the cores over this, so the ratio of two systems' figures explains theirs.
    machine_cpu_ms: float = math.nan
    redis_commands: float | None = None
    redis_round_trips: float | None = None
    redis_cpu_ms: float | None = None
    redis_replica_cpu_ms: float | None = None
    redis_top: list[tuple[str, float]] = field(default_factory=list)
    redis_note: str = ""
    session_mean: float | None = None
    session_max: int | None = None
    person_mean: float | None = None
    person_keys: dict[str, tuple[float, float]] = field(default_factory=dict)
    rounds_per_s: list[float] = field(default_factory=list)  # events/s of each round


def _rate(run: LevelRun) -> tuple[int, float]:
    """Answers that reached the fake LINE API within the run's window, and that window."""
    in_window = sum(1 for s in run.samples if s.status == 200 and s.arrived is not None
                    and s.arrived <= run.stop_at)
    return in_window, run.stop_at - run.started


def level_figures(system: str, runs: list[LevelRun], cpu: Cpu, redis_use: Usage | None = None,
                  memory: Memory | None = None) -> Figures:
    """One level's figures from its rounds (`runs`, one system): counts, CPU and Redis
    summed, latencies pooled, events/s = answers in the rounds' windows / their length."""
    samples = [s for run in runs for s in run.samples]
    walks = [w for run in runs for w in run.walks]
    ok = [s for s in samples if s.status == 200]
    answered = [s for s in ok if s.latency_s is not None]
    rates = [_rate(run) for run in runs]
    in_window, window = sum(r[0] for r in rates), sum(r[1] for r in rates)
    latencies = [s.latency_s for s in answered if s.latency_s is not None]
    webhooks = [s.webhook_s for s in samples if s.status]
    wall = sum(run.ended - run.started for run in runs)
    per_event = max(1, len(ok))
    fig = Figures(
        system=system, n=runs[0].residents, sent=len(samples), answered=len(answered),
        non_200=len(samples) - len(ok), unanswered=len(ok) - len(answered),
        walks=len(walks), complete_walks=sum(w.complete for w in walks),
        results_walks=sum(w.reached_results for w in walks), wall_s=wall,
        events_per_s=in_window / window if window > 0 else math.nan,
        rounds_per_s=[n / w if w > 0 else math.nan for n, w in rates],
        latency_ms={q: percentile(latencies, float(q[1:])) * MS for q in ("p50", "p95", "p99")},
        webhook_ms={q: percentile(webhooks, float(q[1:])) * MS for q in ("p50", "p99")},
        cpu_ms_per_event=cpu.server / per_event * MS,
        cores={"server": cpu.server / wall, "bench": cpu.bench / wall,
               **({"redis": cpu.redis / wall} if cpu.redis is not None else {})},
        machine_cpu_ms=(cpu.server + (cpu.redis or 0.0) + cpu.bench) / per_event * MS,
    )
    if redis_use is not None:
        fig.redis_commands = redis_use.commands / per_event
        fig.redis_round_trips = redis_use.round_trips / per_event
        fig.redis_cpu_ms = redis_use.cpu_s / per_event * MS
        fig.redis_replica_cpu_ms = redis_use.replica_cpu_s / per_event * MS
        by_calls = sorted(redis_use.calls.items(), key=lambda kv: (-kv[1], kv[0]))
        fig.redis_top = [(name, calls / per_event) for name, calls in by_calls
                         if calls / per_event >= 0.01]
        fig.redis_note = redis_use.foreign
    if memory is not None and memory.session_bytes:
        fig.session_mean = mean(memory.session_bytes)
        fig.session_max = max(memory.session_bytes)
        fig.person_mean = mean(memory.person_bytes) if memory.person_bytes else None
        fig.person_keys = memory.by_kind
    return fig


@dataclass
class HangFigures:
    system: str
    hang_s: float
    requests: int
    non_200: int
    webhook_ms: dict[str, float]
    answered_after: int
    expected: int


def hang_figures(system: str, hang_s: float, run: HangRun) -> HangFigures:
    times = [t for t, status in zip(run.webhook_s, run.statuses, strict=True) if status]
    return HangFigures(
        system=system, hang_s=hang_s, requests=len(run.statuses),
        non_200=sum(1 for s in run.statuses if s != 200),
        webhook_ms={q: percentile(times, float(q[1:])) * MS for q in ("p50", "p99", "p100")},
        answered_after=run.answered_after, expected=run.expected)
