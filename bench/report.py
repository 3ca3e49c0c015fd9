"""The results: Markdown tables (printed and written to bench/results.md), the latency plot,
and the targets of issue 6 judged against the figures."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench.figures import Figures, HangFigures
from bench.procs import REPO
from bench.stats import ratio

OURS, BASE = "tsunagu", "echo baseline"


@dataclass
class Run:
    """Everything one `python -m bench` measured, with what it ran on."""

    ours: dict[int, Figures]
    base: dict[int, Figures]
    hang: list[HangFigures]
    paced: dict[str, Figures]  # by system: residents who pause between taps
    think_s: float
    redis_source: str
    redis_version: str
    calibration: tuple[int, int]
    idle: tuple[float, float, str]  # idle server: Redis commands/s, round trips/s, foreign
    settings: dict[str, str]
    duration_s: float
    notes: list[str]
    rounds: int = 1
    # by system: N residents while every LINE call takes `line_ms` (the other levels: 0 ms)
    slow_line: dict[str, Figures] = field(default_factory=dict)
    line_ms: float = 0.0


# -- the machine -------------------------------------------------------------------------
def _first(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict[str, str]:
    mem_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--", "bot",
                                                  "server.py", "gunicorn.conf.py") else ""

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (_git("rev-parse", "--short", "HEAD") or "?") + dirty,
        "cpus": f"{len(os.sched_getaffinity(0))} (nproc)",
        "cpu model": _first("/proc/cpuinfo", "model name"),
        "memory": f"{int(mem_kb) / 1024 / 1024:.1f} GiB" if mem_kb.isdigit() else "?",
        "python": platform.python_version(),
        "packages": ", ".join(f"{p} {version(p)}" for p in
                              ("gunicorn", "flask", "line-bot-sdk", "redis")),
    }


# -- tables -------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _ratio(ours: float | None, base: float | None) -> str:
    r = ratio(ours, base)
    return "–" if math.isnan(r) else f"{r:.2f}×"


Row = tuple[str, Callable[[Figures], float | None], int, bool]
ROWS: list[Row] = [
    ("events/s", lambda f: f.events_per_s, 1, True),
    ("event→answer p50 (ms)", lambda f: f.latency_ms["p50"], 1, True),
    ("event→answer p95 (ms)", lambda f: f.latency_ms["p95"], 1, True),
    ("event→answer p99 (ms)", lambda f: f.latency_ms["p99"], 1, True),
    ("webhook answer p50 (ms)", lambda f: f.webhook_ms["p50"], 1, True),
    ("webhook answer p99 (ms)", lambda f: f.webhook_ms["p99"], 1, True),
    ("server CPU per event (ms)", lambda f: f.cpu_ms_per_event, 2, True),
    ("Redis commands per event", lambda f: f.redis_commands, 2, False),
    ("Redis round trips per event", lambda f: f.redis_round_trips, 2, False),
    ("Redis CPU per event (ms)", lambda f: f.redis_cpu_ms, 3, False),
    ("  of which replicas (ms)", lambda f: f.redis_replica_cpu_ms, 3, False),
    ("CPU per event, server + Redis + load (ms)", lambda f: f.machine_cpu_ms, 2, True),
    ("session in Redis, mean (bytes)", lambda f: f.session_mean, 0, False),
    ("session in Redis, max (bytes)", lambda f: f.session_max, 0, False),
    ("all keys of a person, mean (bytes)", lambda f: f.person_mean, 0, False),
]


def level_table(ours: Figures, base: Figures | None, title: str = "") -> list[str]:
    lines = [title or f"### N = {ours.n} concurrent residents", "",
             f"| figure | {OURS} | {BASE} | ratio |", "|---|---:|---:|---:|"]
    for label, get, digits, has_base in ROWS:
        b = get(base) if base is not None and has_base else None
        lines.append(f"| {label} | {_num(get(ours), digits)} | {_num(b, digits)} | "
                     f"{_ratio(get(ours), b)} |")

    def counts(f: Figures | None) -> str:
        if f is None:
            return "–"
        return f"{f.sent} / {f.unanswered} / {f.non_200}"

    def walks(f: Figures | None, results: bool) -> str:
        if f is None:
            return "–"
        return f"{f.walks} / {f.complete_walks}" + (f" / {f.results_walks}" if results else "")

    def cores(f: Figures | None) -> str:
        if f is None:
            return "–"
        return " / ".join(_num(f.cores.get(k), 2) for k in ("server", "redis", "bench"))

    lines += [
        f"| events sent / unanswered / non-200 | {counts(ours)} | {counts(base)} | |",
        f"| walks / complete / reached results | {walks(ours, True)} | {walks(base, False)} | |",
        f"| CPU cores busy: server / Redis / bench | {cores(ours)} | {cores(base)} | |",
    ]
    if ours.redis_top:
        top = ", ".join(f"{name} {per:.2f}" for name, per in ours.redis_top)
        lines += ["", f"Redis commands per event, by command (inside Lua too): {top}."]
    if ours.person_keys:
        keys = ", ".join(f"`{kind}` {n:.1f} × {size:,.0f} B"
                         for kind, (n, size) in ours.person_keys.items())
        lines += ["", f"Keys of one person after the level (count × mean MEMORY USAGE): {keys}."]
    if ours.redis_note:
        lines += ["", f"**Redis was shared during this level** ({ours.redis_note}): "
                  "its counts may include other clients' work."]
    return [*lines, ""]


def round_ratios(ours: Figures, base: Figures | None) -> str:
    """The events/s ratio of each round (rounds of a level run in pairs)."""
    if base is None or len(ours.rounds_per_s) < 2:
        return "–"
    return " / ".join(_ratio(o, b) for o, b in zip(ours.rounds_per_s, base.rounds_per_s,
                                                  strict=False))


def summary_table(run: Run) -> list[str]:
    lines = ["| N | events/s | ratio | ratio by round | p50 ms | p99 ms | p99 ratio | "
             "webhook p99 ms | CPU ms/event | Redis cmds/event | Redis round trips/event | "
             "session bytes max |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, f in sorted(run.ours.items()):
        b = run.base.get(n)
        lines.append(
            f"| {n} | {_num(f.events_per_s)} | {_ratio(f.events_per_s, b and b.events_per_s)} "
            f"| {round_ratios(f, b)} | {_num(f.latency_ms['p50'])} | {_num(f.latency_ms['p99'])} | "
            f"{_ratio(f.latency_ms['p99'], b and b.latency_ms['p99'])} | "
            f"{_num(f.webhook_ms['p99'])} | {_num(f.cpu_ms_per_event, 2)} | "
            f"{_num(f.redis_commands, 2)} | {_num(f.redis_round_trips, 2)} | "
            f"{_num(f.session_max, 0)} |")
    return [*lines, ""]


def hang_table(run: Run) -> list[str]:
    if not run.hang:
        return []
    lines = ["| system | LINE hangs (s) | webhooks | non-200 | webhook p50 ms | p99 ms | "
             "max ms | answered after LINE recovered |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for h in run.hang:
        lines.append(f"| {h.system} | {h.hang_s:g} | {h.requests} | {h.non_200} | "
                     f"{_num(h.webhook_ms['p50'])} | {_num(h.webhook_ms['p99'])} | "
                     f"{_num(h.webhook_ms['p100'])} | {h.answered_after} of {h.expected} |")
    return [*lines, ""]


def line_bounds(run: Run) -> tuple[float, float] | None:
    """Events/s the threads that wait out LINE calls allow at `run.line_ms`, (tsunagu, echo
    baseline): per process, LINE_DISPATCH_THREADS answering threads against the echo bot's
    GUNICORN_THREADS, whose webhook answers inside the request; × WEB_CONCURRENCY."""
    try:
        procs, answering, webhook = (int(run.settings[k]) for k in (
            "WEB_CONCURRENCY", "LINE_DISPATCH_THREADS", "GUNICORN_THREADS"))
    except (KeyError, ValueError):
        return None
    if run.line_ms <= 0:
        return None
    per_call = run.line_ms / 1000
    return procs * answering / per_call, procs * webhook / per_call


def slow_line_lines(run: Run) -> list[str]:
    """The level where every LINE call takes `run.line_ms`: its table and what bounds it."""
    ours = run.slow_line.get(OURS)
    if ours is None:
        return []
    base = run.slow_line.get(BASE)
    lines = level_table(ours, base, title=(
        f"## N = {ours.n} while LINE takes {run.line_ms:g} ms per call"))
    text = (f"Every call to the fake LINE API is answered after {run.line_ms:g} ms, as the real "
            "API's ~50–200 ms; the other levels run with an instant fake. Ratio by round: "
            f"{round_ratios(ours, base)}.")
    bounds = line_bounds(run)
    if bounds is not None:
        text += (f" A thread waits out each LINE call: tsunagu answers on "
                 f"{run.settings['LINE_DISPATCH_THREADS']} answering threads per process "
                 f"(`LINE_DISPATCH_THREADS`): its pool allows at most {bounds[0]:,.0f} "
                 "events/s here (ticket readers can add some); the echo "
                 f"bot inside its webhook on {run.settings['GUNICORN_THREADS']} gunicorn "
                 f"threads, at most {bounds[1]:,.0f} events/s — its webhook answer waits on "
                 "LINE, ours does not.")
    return [*lines, text, ""]


# -- targets ------------------------------------------------------------------------------
def targets(run: Run) -> list[tuple[str, bool | None, str]]:
    """(target, met, the figure) for each target of issue 6; met=None when not measured."""
    out: list[tuple[str, bool | None, str]] = []
    ours, base = run.ours, run.base
    if ours and base:
        peak_o, peak_b = max(f.events_per_s for f in ours.values()), max(
            f.events_per_s for f in base.values())
        r = ratio(peak_o, peak_b)
        per_n = ", ".join(f"N={n} {_ratio(f.events_per_s, base[n].events_per_s)}"
                          for n, f in sorted(ours.items()) if n in base)
        out.append(("throughput ≥ 70% of the echo baseline", r >= 0.7,
                    f"peak {peak_o:,.0f} vs {peak_b:,.0f} events/s = {r:.0%} ({per_n})"))
    else:
        out.append(("throughput ≥ 70% of the echo baseline", None, "not measured"))
    if 50 in ours and 50 in base:
        r = ratio(ours[50].events_per_s, base[50].events_per_s)
        out.append(("throughput ≥ 0.7× the echo baseline at N=50", r >= 0.7,
                    f"{ours[50].events_per_s:,.0f} vs {base[50].events_per_s:,.0f} events/s = "
                    f"{r:.2f}× over {len(ours[50].rounds_per_s)} round(s) "
                    f"(by round: {round_ratios(ours[50], base[50])})"))
    if 50 in ours:
        p99 = ours[50].latency_ms["p99"]
        figure = f"{p99:.1f} ms"
        if 50 in base:
            figure += f" (echo baseline {base[50].latency_ms['p99']:.1f} ms)"
        paced_o, paced_b = run.paced.get(OURS), run.paced.get(BASE)
        if paced_o is not None and paced_o.n == 50:
            figure += (f"; residents pausing ≈{run.think_s:g} s between taps: "
                       f"{paced_o.latency_ms['p99']:.1f} ms")
            if paced_b is not None:
                figure += f" (echo baseline {paced_b.latency_ms['p99']:.1f} ms)"
        out.append(("p99 event→answer ≤ 50 ms at N=50", p99 <= 50, figure))
    else:
        out.append(("p99 event→answer ≤ 50 ms at N=50", None, "N=50 not run"))
    hang = next((h for h in run.hang if h.system == OURS), None)
    if hang is not None:
        p99 = hang.webhook_ms["p99"]
        out.append(("webhook answer ≤ 100 ms p99 while LINE hangs",
                    p99 <= 100 and hang.non_200 == 0,
                    f"{p99:.1f} ms p99 (max {hang.webhook_ms['p100']:.1f} ms, "
                    f"{hang.non_200} non-200)"))
    else:
        out.append(("webhook answer ≤ 100 ms p99 while LINE hangs", None, "not run"))
    slow, slow_base = run.slow_line.get(OURS), run.slow_line.get(BASE)
    name = (f"throughput ≥ 0.7× the echo baseline at N={slow.n if slow else 50} while LINE "
            f"takes {run.line_ms:g} ms per call")
    if slow is not None and slow_base is not None:
        r = ratio(slow.events_per_s, slow_base.events_per_s)
        figure = (f"{slow.events_per_s:,.0f} vs {slow_base.events_per_s:,.0f} events/s = "
                  f"{r:.2f}× (by round: {round_ratios(slow, slow_base)}); event→answer p50 "
                  f"{slow.latency_ms['p50']:.0f} vs {slow_base.latency_ms['p50']:.0f} ms, "
                  f"webhook p50 {slow.webhook_ms['p50']:.1f} vs "
                  f"{slow_base.webhook_ms['p50']:.1f} ms")
        bounds = line_bounds(run)
        if bounds is not None:
            figure += (f"; the answering pool allows at most {bounds[0]:,.0f} vs "
                       f"{bounds[1]:,.0f} events/s")
        out.append((name, r >= 0.7, figure))
    elif run.line_ms:
        out.append((name, None, "not run"))
    rts = {n: f.redis_round_trips for n, f in ours.items() if f.redis_round_trips is not None}
    if rts:
        ref = 50 if 50 in rts else max(rts)
        spread = ", ".join(f"N={n} {v:.2f}" for n, v in sorted(rts.items()))
        out.append(("≤ 3 Redis round trips per event", rts[ref] <= 3,
                    f"{rts[ref]:.2f} at N={ref} ({spread})"))
    sessions = [f.session_max for f in ours.values() if f.session_max is not None]
    if sessions:
        out.append(("≤ 2 KB of Redis per session", max(sessions) <= 2048,
                    f"max {max(sessions)} bytes (MEMORY USAGE of the session key)"))
    return out


def targets_lines(run: Run) -> list[str]:
    lines = ["## Targets", ""]
    for name, met, figure in targets(run):
        verdict = "NOT MEASURED" if met is None else "MET" if met else "NOT MET"
        lines.append(f"- **{verdict}** — {name}: {figure}")
    return [*lines, ""]


# -- the document -------------------------------------------------------------------------
METHOD = """\
## Method

`python -m bench` starts the server as the Procfile does (`gunicorn server:app` from the repo
root, so `gunicorn.conf.py` applies; only the bind is narrowed to 127.0.0.1 through
`GUNICORN_CMD_ARGS`) and the echo baseline (`gunicorn --pythonpath bench baseline:app`, same
workers and threads), both with `LINE_API_BASE_URL` pointing at a fake LINE Messaging API
(`tests/fakes/line_api.py`) served by the bench process. Each resident is a thread holding one
keep-alive connection; it walks follow → welcome:start → whose:self → age:18_39 →
concern:loneliness → more:none → ward:skip → contact:phone (8 events, the last answered with
the results carousel), sending each signed webhook only after the previous answer reached the
fake LINE API, and starts again as a new person until the level's time is up. Each level runs
in rounds, tsunagu and the baseline alternately in mirrored order (tsunagu, echo, echo,
tsunagu; the next level starts with echo), so a machine that speeds up or slows down during
a level weighs on both alike; a level's figures pool its rounds, and the summary also gives
each round's ratio, which shows how much the machine moved.

- **events/s**: answers that reached the fake LINE API within the level's window / window.
- **event→answer**: from just before the webhook request to the moment the fake LINE API
  took the reply (or push). **webhook answer**: HTTP round trip of `POST /callback`.
- **Redis commands per event**: delta of INFO commandstats (`calls`, the bench's own INFO and
  CLIENT LIST removed) / events; commands run inside Lua count too.
- **Redis round trips per event**: delta of INFO stats `total_reads_processed` (one per batch
  a client sends: a pipeline in one write is one read, so is a blocking XREADGROUP) / events.
  Checked on this Redis before the run: {cal_n} pipelines of 5 commands counted as
  {cal_got} reads. Both include the dispatchers' idle polling (a blocking XREADGROUP per
  dispatcher thread), which weighs most at N=1: idle, the server made {idle_cmds:.1f}
  commands/s in {idle_rts:.1f} round trips/s{idle_note}.
- **session bytes**: MEMORY USAGE of each resident's `<prefix>:{{pid}}:session` after the level
  (the pid recomputed from the bench's own BOT_SECRET_KEY); "all keys of a person" is every
  key under the person's hash tag, found by SCAN (e.g. the 24-hour de-duplication marks).
- **CPU per event**: utime+stime of the gunicorn master and workers from /proc/<pid>/stat,
  before/after the level, / events. "CPU cores busy" is CPU seconds / wall seconds for the
  server, Redis (INFO used_cpu_*) and the bench process (load generator + fake LINE API).
- **paced level**: the same walk, but each resident pauses 0.5–1.5 × {think} s before each
  tap, as a person reading the answer, and stops where it is when the time is up. Without
  pauses the residents form a closed loop: once the server is saturated every level measures
  latency ≈ N / throughput (Little's law), so at N=50 and N=200 the latency figures mostly say
  how far past saturation the load is.
- **LINE takes {line_ms} ms per call** (`--line-ms`, 0: not run): FakeLine.delay_s set for
  one level of N=50 (mirrored rounds, as the others); every LINE call — reply, push, loading
  animation — is answered after it. The other levels and the hang scenario run with an
  instant fake.
- **LINE hangs**: FakeLine.hang_s set; residents send their walk's events every {gap} s
  without waiting for answers; then LINE recovers and the accepted events are waited for.
"""


def document(run: Run, info: dict[str, str]) -> str:
    lines = ["# tsunagu benchmark", "",
             "Generated by `make bench` (`python -m bench`); do not edit by hand. Ratios are "
             "tsunagu / echo baseline from the same run — on a noisy machine they are the "
             "figures that count.", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += [f"- **redis**: {run.redis_version} ({run.redis_source})",
              f"- **settings**: {', '.join(f'{k}={v}' for k, v in run.settings.items())}",
              f"- **level length**: {run.rounds} × {run.duration_s:g} s per system and N "
              "(rounds in mirrored order)", ""]
    lines += ["## Summary (tsunagu; ratio = tsunagu / baseline)", "", *summary_table(run)]
    lines += ["![event→answer latency against concurrency](latency.png)", ""]
    lines += ["## Per level", ""]
    for n, f in sorted(run.ours.items()):
        lines += level_table(f, run.base.get(n))
    if OURS in run.paced:
        paced = run.paced[OURS]
        lines += level_table(paced, run.paced.get(BASE), title=(
            f"## N = {paced.n} residents who pause between taps (0.5–1.5 × {run.think_s:g} s)"))
    lines += slow_line_lines(run)
    lines += ["## While the LINE API hangs", "", *hang_table(run)]
    lines += targets_lines(run)
    if run.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in run.notes], ""]
    cal_n, cal_got = run.calibration
    idle_cmds, idle_rts, foreign = run.idle
    method = METHOD.format(cal_n=cal_n, cal_got=cal_got, idle_cmds=idle_cmds,
                           idle_rts=idle_rts, think=f"{run.think_s:g}",
                           idle_note=f" (Redis was shared: {foreign})" if foreign else "",
                           gap=run.settings.get("hang_gap_s", "?"),
                           line_ms=f"{run.line_ms:g}")
    if not run.line_ms:  # the slow-LINE level did not run: no bullet for it
        start = method.index("- **LINE takes ")
        method = method[:start] + method[method.index("- **LINE hangs**", start):]
    lines.append(method)
    return "\n".join(lines)


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, figs, color in ((OURS, run.ours, "tab:blue"), (BASE, run.base, "tab:gray")):
        ns = sorted(figs)
        if not ns:
            continue
        for q, style in (("p50", "-o"), ("p99", "--s")):
            ax.plot(ns, [figs[n].latency_ms[q] for n in ns], style, color=color,
                    label=f"{label} {q}")
    for label, color in ((OURS, "tab:blue"), (BASE, "tab:gray")):
        paced = run.paced.get(label)
        if paced is not None:
            ax.plot([paced.n], [paced.latency_ms["p99"]], "*", color=color, markersize=11,
                    label=f"{label} p99, residents pausing ≈{run.think_s:g} s")
    ax.axhline(50, color="tab:red", linewidth=0.8, linestyle=":", label="target p99 at N=50")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ns = sorted(set(run.ours) | set(run.base))
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("concurrent residents (N)")
    ax.set_ylabel("event → answer at LINE API (ms)")
    ax.set_title("tsunagu vs. echo baseline: event→answer latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
