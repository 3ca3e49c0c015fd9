"""The city's figures: anonymous counts of what residents needed, where they stopped, whether
it helped — counted as it happens, one dimension × one day at a time.

  <prefix>:{fig:<YYYY-MM-DD>}:counts     HASH "<measure>|<key>" → count, kept 400 days
  <prefix>:{fig:<YYYY-MM-DD>:<n>}:counts the same, on a Redis Cluster: the day's shards

The day is the Asia/Tokyo date; the hour of day is a measure of its own (`hour`), never
combined with another. No pseudonym, no typed text, no per-person row: a field is a measure
and one value of one dimension (a category id, a ward id, a state name, a window id).

Counting reads what the engine did (the Step's events, the session before and after, the cards
it showed), not metric labels. The writes ride in the pipeline that saves the session
(`writes_for`), so a message costs no extra round trip; staff-side figures (claims, first
answers) have their own small pipeline (`count`). A failure to count never fails an answer:
the count is lost, not the reply.

On a Redis Cluster one day's hash would be one node that every answer's pipeline writes: with
that node down, every answer failed (the pipeline raised after the client's retries, ~4.5 s,
and the person got the degraded answer). So there the day is `SHARDS` hashes whose hash tags
fall in `SHARDS` equal slot ranges (`day_tags`), and an answer counts into the one on the node
of the person's own session (`writes_for(near=…)`): its pipeline touches no other node for the
figures. `count` writes to a shard on a node not found down lately, else the count is lost
(`figures_lost`). The report sums the day's hash and its shards (older days: the hash alone).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from bot import logs
from bot.redisconn import UNAVAILABLE, beside, is_cluster, node_name, script, spread_tags
from bot.replies import Cards
from bot.streams import Outages

if TYPE_CHECKING:
    from bot.engine import Incoming, Step
    from bot.session import Session

log = logs.get("figures")
TOKYO = ZoneInfo("Asia/Tokyo")
KEEP_DAYS = 400
SEP = "|"
# A day's shards on a cluster: one hash tag in each of this many equal slot ranges, so every
# node owning at least two ranges' worth of contiguous slots (up to 16 even primaries) holds one.
SHARDS = 32

# Add several counts to the day's hash and renew its TTL. ARGV: TTL (s), field, n, field, n…
_ADD = """
for i = 2, #ARGV, 2 do redis.call('hincrby', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('expire', KEYS[1], ARGV[1])
return 1
"""
# Publication rule: a cell below this is shown as "fewer than 5" (the wording is in the pack).
SMALL_CELL = 5

# Answers stored in the session that are counted as a measure of their own (session field →
# measure). Concerns are counted separately (primary / other).
ANSWER_MEASURES = {"whose": "whose", "age": "age", "ward": "ward", "contact": "contact",
                   "feedback": "feedback", "followup": "followup_optin",
                   "followup_answer": "followup_answer"}
# The answer that marks a conversation as started: the first question's.
STARTED_BY = "whose"
# Commands that end the path a resident was on: counted as a stop at the state they were in.
QUITTING = {"stop", "restart", "forget"}
# Time from a case being opened to the first staff answer, in buckets (upper bound s, key).
FIRST_REPLY_BUCKETS = ((15 * 60, "lt_15m"), (3600, "15m_1h"), (4 * 3600, "1h_4h"),
                       (24 * 3600, "4h_24h"), (72 * 3600, "1d_3d"))

# Every measure, in report order, with what its key is. The README lists the same.
MEASURES: dict[str, str] = {
    "contacts": "channel: a first message (no stored conversation) or a LINE follow",
    "conversations_started": "channel: the first question answered",
    "started_language": "language of the conversations started",
    "hour": "hour of day (Asia/Tokyo, 00-23) of the conversations started",
    "conversations_completed": "channel: results shown",
    "completed_language": "language of the conversations completed",
    "reached": "state entered",
    "left": "state left by answering (or a command that leads on)",
    "quit": "state a resident was in when they chose stop, start over or delete my data",
    "stopped_at": "derived: reached - left; where conversations stopped",
    "whose": "whose worry",
    "age": "age band",
    "category": "every category chosen",
    "category_primary": "the first category chosen",
    "category_other": "categories added after the first",
    "ward": "ward (health and welfare centre) or outside/skip",
    "contact": "preferred way to talk",
    "text": "free text matched to a choice: understood / not_understood",
    "command": "commands used",
    "crisis": "crisis replies by kind (maybe: the soft tier's gentle line, given beside the "
              "normal reply, not a crisis reply)",
    "handoff_opened": "channel: staff cases opened",
    "handoff_claimed": "channel: staff cases claimed",
    "handoff_resolved": "channel: staff cases resolved",
    "handoff_expired": "channel: staff cases expired unresolved",
    "handoff_first_reply": "time from a case opened to the first staff answer (bucket)",
    "window_shown": "window or hotline id shown on a card",
    "feedback": "was it useful: yes / no / unsure",
    "followup_optin": "may we ask in 3 days: yes / no",
    "followup_sent": "follow-up messages sent",
    "followup_answer": "answer to the follow-up",
    "wrong_number": "window id reported as unreachable or wrong",
}
DERIVED = {"stopped_at"}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR = timedelta(hours=1)
_last_day: tuple[int, tuple[str, str]] = (-1, ("", ""))  # (UTC hour, its answer)


def tokyo_day(now: datetime) -> tuple[str, str]:
    """(date, hour) in Asia/Tokyo for a moment.

    The answer for the UTC hour last asked is kept (one tuple, replaced whole: safe across
    threads): Tokyo is a whole number of hours from UTC, so it holds for all of that hour,
    and every message asks it about the present."""
    global _last_day
    aware = now if now.tzinfo else now.replace(tzinfo=UTC)
    hour = (aware - _EPOCH) // _HOUR
    last = _last_day
    if last[0] == hour:
        return last[1]
    local = aware.astimezone(TOKYO)
    found = local.date().isoformat(), f"{local.hour:02d}"
    offset = local.utcoffset()
    if offset is not None and not offset % _HOUR:
        _last_day = (hour, found)
    return found


def today() -> date:
    return datetime.now(TOKYO).date()


def first_reply_bucket(seconds: float) -> str:
    for limit, key in FIRST_REPLY_BUCKETS:
        if seconds < limit:
            return key
    return "over_3d"


def day_tags(day: str) -> tuple[tuple[int, str], ...]:
    """(slot, hash tag) of a day's shards on a cluster, by slot: for each of `SHARDS` equal
    slot ranges the first `fig:<day>:<n>` that falls in it. The same in every process."""
    return spread_tags(f"fig:{day}", SHARDS)


def _hash_key(prefix: str, tag: str) -> str:
    return f"{prefix}:{{{tag}}}:counts"


@lru_cache(maxsize=512)
def shard_keys(prefix: str, day: str) -> tuple[str, ...]:
    """The keys of a day's shards (`day_tags`), in slot order: built once, not per answer."""
    return tuple(_hash_key(prefix, tag) for _, tag in day_tags(day))


def tally(channel: str, before: Session | None, step: Step, incoming: Incoming | None = None,
          hour: str | None = None) -> Counter[tuple[str, str]]:
    """What one step adds to the figures: (measure, key) → n. Pure; no I/O.

    `before` is the session as loaded (None for a stranger), `step.session` as it will be
    saved (None: deleted).
    """
    counts: Counter[tuple[str, str]] = Counter()
    after = step.session
    events = step.events
    if "degraded" in events or "flooded" in events:
        return counts
    commands = {e.split(":", 1)[1] for e in events if e.startswith("command:")}
    for command in sorted(commands):
        counts["command", command] += 1
    for event in events:
        kind, _, value = event.partition(":")
        if kind == "crisis":
            counts["crisis", value] += 1
        elif event == "handoff:open":
            counts["handoff_opened", channel] += 1
        elif kind == "text" and value in ("understood", "not_understood"):
            counts["text", value] += 1
        elif kind in ("wrong_number", "followup_sent"):
            counts[kind, value] += 1
    # Where the conversation went: entered / left states. A quitting command counts as a stop
    # where the resident was, not as moving on.
    first_contact = incoming is not None and incoming.kind == "event" and (
        incoming.value == "first_contact")
    restarted = (before is not None and after is not None and len(after.history) == 1
                 and (len(before.history) > 1 or bool(commands & QUITTING) or first_contact))
    fresh = before is None or restarted
    prev = before.state if before is not None else None
    new_state = after.state if after is not None else None
    if prev is not None and commands & QUITTING:
        counts["quit", prev] += 1
    elif prev is not None and new_state is not None and (prev != new_state or restarted):
        counts["left", prev] += 1
    if new_state is not None and (new_state != prev or fresh):
        counts["reached", new_state] += 1
        if before is None or first_contact:
            counts["contacts", channel] += 1
    if after is not None:
        old = before if before is not None and not restarted else None
        _answers(counts, channel, old, after, hour)
    if "results" in events and after is not None:
        counts["conversations_completed", channel] += 1
        counts["completed_language", after.lang] += 1
    for reply in step.replies:
        if isinstance(reply, Cards):  # (getattr with a default costs a pydantic miss each)
            for card in reply.cards:
                counts["window_shown", card.id] += 1
    return counts


def _answers(counts: Counter[tuple[str, str]], channel: str, old: Session | None,
             after: Session, hour: str | None) -> None:
    """Answers new in this step; `old` is None when the conversation began afresh."""
    old_answers = old.answers if old is not None else {}
    old_concerns = old.concerns if old is not None else []
    if STARTED_BY in after.answers and STARTED_BY not in old_answers:
        counts["conversations_started", channel] += 1
        counts["started_language", after.lang] += 1
        if hour is not None:
            counts["hour", hour] += 1
    for name, measure in ANSWER_MEASURES.items():
        value = after.answers.get(name)
        if value is not None and value != old_answers.get(name):
            counts[measure, value] += 1
    for i, category in enumerate(after.concerns):
        if category in old_concerns:
            continue
        counts["category", category] += 1
        counts["category_primary" if i == 0 else "category_other", category] += 1


@dataclass(frozen=True)
class Row:
    date: str
    measure: str
    key: str
    count: int


class Figures:
    """Adds counts to the day's hash and reads them back for the report and the CLI."""

    def __init__(self, client: redis.Redis, prefix: str = "tsunagu",
                 keep_days: int = KEEP_DAYS):
        self.redis = client
        self.prefix = prefix
        self.keep_s = keep_days * 24 * 3600
        self._outage = logs.Throttle(60.0)
        self._down = Outages()  # cluster nodes whose `count` failed lately: tried last
        self._turn = 0

    def key(self, day: str, tag: str | None = None) -> str:
        """The day's hash (on one Redis, and days counted before the shards), or one shard."""
        return _hash_key(self.prefix, tag or f"fig:{day}")

    def _near(self, day: str, near: str) -> str:
        """The day's shard on the node of `near` (a key of the person's): its own slot range
        first, then the next ones (a node too small to own a range: the range's shard)."""
        keys = shard_keys(self.prefix, day)
        j = key_slot(near.encode()) * SHARDS // REDIS_CLUSTER_HASH_SLOTS
        return beside(self.redis, near, keys, j) or keys[j]

    def add(self, pipe: Any, now: datetime, counts: Counter[tuple[str, str]],
            near: str | None = None) -> None:
        """Queue the increments on a pipeline someone else executes (no round trip of ours).
        On a cluster, `near` (a key the pipeline writes anyway) picks the day's shard on its
        node, so counting adds no node to the pipeline."""
        if not counts:
            return
        day, _ = tokyo_day(now)
        pairs = [part for (measure, value), n in counts.items() if n
                 for part in (f"{measure}{SEP}{value}", n)]
        if pairs:
            key = (self._near(day, near) if near and is_cluster(self.redis)
                   else self.key(day))
            # One command however many counts: each pipelined command costs the client as
            # much as the Redis work it stands for.
            script(pipe, _ADD, [key], self.keep_s, *pairs)

    def writes_for(self, channel: str, before: Session | None, step: Step,
                   incoming: Incoming | None, now: datetime,
                   near: str | None = None) -> Callable[[Any], None] | None:
        """The pipeline writes that count one step, or None; never raises (a bug in counting
        must not cost the resident their answer). `near`: a key of the person's in the same
        pipeline (see `add`)."""
        try:
            counts = tally(channel, before, step, incoming, hour=tokyo_day(now)[1])
        except Exception as exc:
            logs.failure("figures.tally", exc)
            return None
        if not counts:
            return None
        return lambda pipe: self.add(pipe, now, counts, near)

    def count(self, now: datetime, items: Iterable[tuple[str, str]]) -> None:
        """Count now, in one round trip of our own; a Redis failure loses the count only. On a
        cluster, into a shard on a node not found down lately (one timeout per node found
        down, then 30 s elsewhere)."""
        counts = Counter(items)
        node = near = None
        if counts and is_cluster(self.redis):
            day = tokyo_day(now)[0]
            self._turn = (self._turn + 1) % SHARDS
            keys = shard_keys(self.prefix, day)
            live = ((k, n) for k in keys[self._turn:] + keys[:self._turn]  # (a slot no node
                    if (n := node_name(self.redis, k)) is not None  # serves is left out)
                    and not self._down.is_down(n))
            near, node = next(live, (None, None))
            if near is None:
                self._lost(redis.ConnectionError("every figures node is down"))
                return
        try:
            pipe = self.redis.pipeline(transaction=False)
            self.add(pipe, now, counts, near)
            pipe.execute()
        except (redis.RedisError, *UNAVAILABLE) as exc:  # RedisClusterException is no RedisError
            if node is not None and isinstance(exc, UNAVAILABLE):
                self._down.failed(node)
            self._lost(exc)
            return
        if node is not None:
            self._down.recovered(node)

    def _lost(self, exc: BaseException) -> None:
        if self._outage.ready():
            logs.event(log, "figures_lost", logging.WARNING, error=type(exc).__name__)

    def read(self, since: date, until: date) -> list[Row]:
        """Every stored count between two Tokyo dates (inclusive), plus the derived ones."""
        days = list(_days(since, until))
        pipe = self.redis.pipeline(transaction=False)
        for day in days:  # the day's hash, then its shards (a cluster's): summed
            pipe.hgetall(self.key(day))
            for key in shard_keys(self.prefix, day):
                pipe.hgetall(key)
        got = pipe.execute()
        rows: list[Row] = []
        for i, day in enumerate(days):
            cells: dict[tuple[str, str], int] = {}
            for raw in got[i * (SHARDS + 1):(i + 1) * (SHARDS + 1)]:
                for field, value in raw.items():
                    text = field.decode() if isinstance(field, bytes) else field
                    measure, _, key = text.partition(SEP)
                    cells[measure, key] = cells.get((measure, key), 0) + int(value)
            for state in sorted({k for m, k in cells if m == "reached"}):
                stopped = cells.get(("reached", state), 0) - cells.get(("left", state), 0)
                if stopped > 0:
                    cells["stopped_at", state] = stopped
            order = list(MEASURES)
            for (measure, key), n in sorted(cells.items(), key=lambda kv: (
                    order.index(kv[0][0]) if kv[0][0] in order else len(order), kv[0])):
                rows.append(Row(day, measure, key, n))
        return rows


def _days(since: date, until: date) -> Iterator[str]:
    day = since
    while day <= until:
        yield day.isoformat()
        day += timedelta(days=1)


# -- output: tidy CSV, JSON, a table ----------------------------------------------------------

def published(rows: list[Row], small: str) -> list[tuple[str, str, str, str]]:
    """Rows as text, a count below SMALL_CELL replaced by `small` (e.g. "fewer than 5")."""
    return [(r.date, r.measure, r.key, str(r.count) if r.count >= SMALL_CELL else small)
            for r in rows]


def to_csv(rows: list[Row], small: str | None = None) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["date", "measure", "key", "count"])
    if small is None:
        writer.writerows((r.date, r.measure, r.key, r.count) for r in rows)
    else:
        writer.writerows(published(rows, small))
    return out.getvalue()


def to_json(rows: list[Row], small: str | None = None) -> str:
    import json

    cells = ([(r.date, r.measure, r.key, r.count) for r in rows] if small is None
             else published(rows, small))
    return json.dumps([{"date": d, "measure": m, "key": k, "count": c} for d, m, k, c in cells],
                      ensure_ascii=False, indent=1)


def to_table(rows: list[Row], small: str | None = None) -> str:
    """Totals over the period, one line per measure and key (for a terminal)."""
    totals: Counter[tuple[str, str]] = Counter()
    for r in rows:
        totals[r.measure, r.key] += r.count
    order = list(MEASURES)
    lines = []
    for (measure, key), n in sorted(totals.items(), key=lambda kv: (
            order.index(kv[0][0]) if kv[0][0] in order else len(order), -kv[1], kv[0][1])):
        shown = str(n) if small is None or n >= SMALL_CELL else small
        lines.append(f"{measure:<26} {key:<24} {shown:>8}")
    return "\n".join(lines) + ("\n" if lines else "")
