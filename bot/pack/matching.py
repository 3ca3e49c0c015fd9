"""Answers → ranked windows. Deterministic and explainable: every score has its reasons.

Scores are plain integers so a maintainer can predict an order from the YAML alone:
primary worry 100, another worry 60, a follow-up flag the window names 30, the way the person
prefers to talk 10, an age-specific window that fits 5, plus the window's own `rank`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.pack.loader import Pack
from bot.pack.models import Window

PRIMARY, SECONDARY, FLAG, CHANNEL, AGE_FIT, URGENT = 100, 60, 30, 10, 5, 1000
CONTACT_TO_CHANNEL = {"phone": "phone", "mail": "mail", "visit": "visit",
                      "home_visit": "home_visit", "chat": "chat"}


@dataclass(frozen=True)
class Answers:
    """What matching needs from a session; unknown or declined answers are None."""

    whose: str | None = None
    age: str | None = None
    concerns: tuple[str, ...] = ()
    flags: frozenset[str] = frozenset()
    ward: str | None = None
    contact: str | None = None


@dataclass(frozen=True)
class Match:
    window: Window
    score: int
    reasons: tuple[str, ...] = field(default=())
    urgent: bool = False


def fits(w: Window, a: Answers) -> bool:
    """The window's audience admits the person: age band and whose worry, when known."""
    if w.ages and a.age and a.age not in w.ages:
        return False
    return not (w.whose and a.whose and a.whose not in w.whose)


def _score(w: Window, a: Answers) -> Match | None:
    reasons: list[str] = []
    score = w.rank
    urgent = False
    if w.only_when:
        hit = sorted(set(w.only_when) & a.flags)
        if not hit:
            return None
        score += URGENT
        urgent = True
        reasons.append(f"urgent:{','.join(hit)}")
    if not fits(w, a):
        return None
    if w.ages and a.age:
        score += AGE_FIT
        reasons.append(f"age:{a.age}")
    cats = [c for c in a.concerns if c in w.categories]
    if not cats and not urgent:
        return None
    if a.concerns and cats and cats[0] == a.concerns[0]:
        score += PRIMARY
        reasons.append(f"primary:{cats[0]}")
        cats = cats[1:]
    for cat in cats:
        score += SECONDARY
        reasons.append(f"also:{cat}")
    for flag in sorted(set(w.flags) & a.flags):
        score += FLAG
        reasons.append(f"flag:{flag}")
    channel = CONTACT_TO_CHANNEL.get(a.contact or "")
    if channel and channel in w.channels:
        score += CHANNEL
        reasons.append(f"channel:{channel}")
    return Match(window=w, score=score, reasons=tuple(reasons), urgent=urgent)


def rank(pack: Pack, answers: Answers, kind: str, limit: int) -> list[Match]:
    matches = [m for w in pack.windows.values() if w.kind == kind and not w.ward
               if (m := _score(w, answers)) is not None]
    matches.sort(key=lambda m: (-m.score, m.window.id))
    return matches[:limit]


@dataclass(frozen=True)
class Results:
    windows: list[Match]
    hotlines: list[Match]
    centre: Window | None

    @property
    def urgent(self) -> bool:
        return any(m.urgent for m in self.hotlines)


def match(pack: Pack, answers: Answers, max_windows: int = 5, max_hotlines: int = 4) -> Results:
    """The windows and hotlines for these answers, best first, plus the ward's centre."""
    centre = None
    if answers.ward:
        ward = pack.ward(answers.ward)
        if ward and ward.centre:
            centre = pack.windows.get(ward.centre)
    windows = rank(pack, answers, "window", max_windows)
    hotlines = rank(pack, answers, "hotline", max_hotlines)
    return Results(windows=windows, hotlines=hotlines, centre=centre)
