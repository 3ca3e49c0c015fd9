"""`python -m bot eval-triage`: how often free text reaches the right category.

Each sentence of tests/data/triage_eval.yaml is sent through the engine twice — as a stranger's
first message, and typed at the age question in the middle of the questionnaire — and what the
bot then does is read back: the category it asks the resident to confirm, or the crisis reply
(self-harm → suicide; danger from others → dv_abuse). Offering two or three choices, or none,
counts as "no category". `none` items are right when no category is named.

Figures: accuracy, per-category precision and recall, a confusion table, the slots read (whose,
age band, duration, ward), and the accuracy on the even- and odd-numbered halves: to check that
vocabulary generalises, tune it looking at one half only and compare with the other.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.engine import Engine, Incoming
from bot.replies import Question

CRISIS_CATEGORY = {"self_harm": "suicide", "violence": "dv_abuse", "child_harm": "dv_abuse"}
NONE = "none"
# Answers in the set → the handbook's values.
WHOSE = {"self": "self", "family": "family", "friend": "friend", "supporter": "supporter"}


@dataclass
class Outcome:
    expected: str
    accepted: frozenset[str]
    got: str
    offered: list[str]

    @property
    def right(self) -> bool:
        return self.got in self.accepted


@dataclass
class Pass:
    """One way of sending the sentences (first message, or mid-flow)."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)

    def accuracy(self, items: list[Outcome] | None = None) -> float:
        items = self.outcomes if items is None else items
        return sum(o.right for o in items) / len(items) if items else 0.0

    def half(self, parity: int) -> float:
        return self.accuracy(self.outcomes[parity::2])


@dataclass
class TriageReport:
    passes: list[Pass]
    categories: list[str]
    slots: dict[str, tuple[int, int]]  # slot → (right, given)
    misses: list[str]

    def format(self, verbose: bool = False) -> str:
        lines = []
        for p in self.passes:
            n, right = len(p.outcomes), sum(o.right for o in p.outcomes)
            lines.append(f"{p.name:<14} accuracy {p.accuracy():6.1%}  ({right}/{n})   "
                         f"even half {p.half(0):6.1%}   odd half {p.half(1):6.1%}")
        first = self.passes[0]
        labels = [*self.categories, NONE]
        lines.append("")
        lines.append(f"{'category':<15} {'n':>4} {'precision':>9} {'recall':>7}")
        for cat in labels:
            tp = sum(1 for o in first.outcomes if o.got == cat and o.right)
            predicted = sum(1 for o in first.outcomes if o.got == cat)
            actual = sum(1 for o in first.outcomes if o.expected == cat)
            precision = tp / predicted if predicted else 0.0
            recall = sum(1 for o in first.outcomes if o.expected == cat and o.right) / actual \
                if actual else 0.0
            lines.append(f"{cat:<15} {actual:>4} {precision:>9.1%} {recall:>7.1%}")
        lines.append("")
        lines.append("confusion (first message; rows expected, columns got):")
        short = [c[:5] for c in labels]
        lines.append(" " * 15 + " ".join(f"{s:>5}" for s in short))
        for cat in labels:
            row = Counter(o.got for o in first.outcomes if o.expected == cat)
            cells = " ".join(f"{row.get(c, 0) or '.':>5}" for c in labels)
            lines.append(f"{cat:<15}{cells}")
        lines.append("")
        for slot, (right, given) in self.slots.items():
            share = right / given if given else 0.0
            lines.append(f"slot {slot:<14} {share:6.1%}  ({right}/{given})")
        if verbose:
            lines.append("")
            lines += [f"  miss: {m}" for m in self.misses]
        return "\n".join(lines)


def _outcome(engine: Engine, step: Any) -> tuple[str, list[str]]:
    """What the bot understood, read from its reply: a confirmed guess or a crisis."""
    session = step.session
    kinds = [e.split(":", 1)[1] for e in step.events if e.startswith("crisis:")
             and e != "crisis:maybe"]  # the soft tier's line: the normal reply stands
    if kinds:
        return CRISIS_CATEGORY.get(kinds[0], NONE), []
    guess = (session.guess or {}) if session is not None else {}
    question = [r for r in step.replies if isinstance(r, Question)]
    if question and question[-1].state == "triage" and guess.get("mode") == "confirm":
        return guess["cats"][0], []
    if any(e.startswith("triage:accept:") for e in step.events):  # taken at once
        return next(e.split(":")[2] for e in step.events if e.startswith("triage:accept:")), []
    return NONE, list(guess.get("cats") or [])


def _mid_flow(engine: Engine, lang: str, now: Any) -> Any:
    """A session at the age question, as after `welcome.start` → `whose.self`."""
    session = engine.new_session(lang)
    for value, state in (("start", engine.flow.start), ("self", "whose")):
        session = engine.step(session, Incoming("tap", value, state), now).session
    return session


def evaluate_triage(engine: Engine, path: Path, now: Any) -> TriageReport:
    from bot.triage import triage

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    items = data["items"]
    first, middle = Pass("first message"), Pass("mid-flow (age)")
    slots: dict[str, list[int]] = {k: [0, 0] for k in ("whose", "age", "duration", "ward")}
    misses = []
    for item in items:
        text, expected = str(item["text"]), str(item["category"])
        also = item.get("also") or []
        accepted = frozenset([expected, *([also] if isinstance(also, str) else also)])
        lang = "en" if item.get("lang") == "en" else "ja"
        got, offered = _outcome(engine, engine.step(None, Incoming("text", text), now))
        first.outcomes.append(Outcome(expected, accepted, got, offered))
        if got not in accepted:
            misses.append(f"[{expected}] {text} -> {got} {offered or ''}")
        session = _mid_flow(engine, lang, now)
        got, offered = _outcome(engine, engine.step(session, Incoming("text", text), now))
        middle.outcomes.append(Outcome(expected, accepted, got, offered))
        read = triage(text, lang, engine.pack).slots
        for slot, key in (("whose", "whose"), ("age", "age"), ("duration", "hiki_duration"),
                          ("ward", "ward")):
            if item.get(slot):
                slots[slot][1] += 1
                slots[slot][0] += read.get(key) == str(item[slot])
    return TriageReport(passes=[first, middle], categories=list(engine.pack.categories),
                        slots={k: (v[0], v[1]) for k, v in slots.items()}, misses=misses)
