"""Windows of a content pack → Card replies, with hours and open-now in the resident's language."""

from __future__ import annotations

from datetime import datetime

from bot.pack.hours import is_open, next_opening
from bot.pack.loader import Pack
from bot.pack.models import WEEKDAYS, Hours, Lang, Window
from bot.replies import Card

WEEKDAYS_MON_FRI = ["mon", "tue", "wed", "thu", "fri"]


def _clock(hhmm: str) -> str:
    hour, minute = hhmm.split(":")
    return f"{int(hour)}:{minute}"


def _days_text(pack: Pack, days: list[str], lang: Lang) -> str:
    if sorted(days, key=WEEKDAYS.index) == list(WEEKDAYS):
        return pack.msg("hours.everyday", lang)
    if sorted(days, key=WEEKDAYS.index) == WEEKDAYS_MON_FRI:
        return pack.msg("hours.weekdays", lang)
    sep = pack.msg("hours.day_separator", lang)
    return sep.join(pack.msg(f"hours.day.{d}", lang) for d in sorted(days, key=WEEKDAYS.index))


def hours_text(pack: Pack, hours: Hours, lang: Lang) -> str:
    """E.g. "Weekdays 8:30-17:15 (closed on public holidays ...)", in the pack's words."""
    if hours.always:
        text = pack.msg("hours.always", lang)
    else:
        parts = [pack.msg("hours.period", lang).format(
                    days=_days_text(pack, p.days, lang), start=_clock(p.start),
                    end=_clock(p.end)) for p in hours.weekly]
        for m in hours.monthly:
            key = "hours.monthly_next_day" if m.next_day else "hours.monthly"
            parts.append(pack.msg(key, lang).format(day=m.day, start=_clock(m.start),
                                                    end=_clock(m.end)))
        text = pack.msg("hours.period_separator", lang).join(parts)
        if hours.weekly and hours.holidays == "closed":
            key = "closed_holidays_and_new_year" if hours.closed_dates else "closed_holidays"
            text += pack.msg(f"hours.{key}", lang)
    if hours.note:
        text += " " + hours.note.get(lang)
    return text


def opens_text(pack: Pack, opening: datetime, lang: Lang) -> str:
    """When a closed line opens next, in the pack's words (`hours.opens_at`)."""
    weekday = pack.msg(f"hours.day.{WEEKDAYS[opening.weekday()]}", lang)
    return pack.msg("hours.opens_at", lang).format(
        month=opening.month, day=opening.day, weekday=weekday,
        time=f"{opening.hour}:{opening.minute:02d}")


def status_text(pack: Pack, hours: Hours, lang: Lang, now: datetime,
                open_now: bool | None = None) -> str:
    """`hours.status_open`, or `hours.status_closed_until` with when it opens next (within
    a month)."""
    if open_now is None:
        open_now = is_open(hours, now)
    if open_now:
        return pack.msg("hours.status_open", lang)
    opening = next_opening(hours, now)
    if opening is None:
        return pack.msg("hours.status_closed", lang)
    return pack.msg("hours.status_closed_until", lang).format(
        opens=opens_text(pack, opening, lang))


def card(pack: Pack, window: Window, lang: Lang, now: datetime,
         live: bool = False) -> Card:
    """A window as a card. `live` marks 24-hour lines `hours.status_open` too (crisis replies, where
    what matters is that the line answers now), instead of `hours.status_always`."""
    open_now = is_open(window.hours, now) if window.hours else None
    if window.hours is None:
        status = None
    elif window.hours.always and not live:
        status = pack.msg("hours.status_always", lang)
    else:
        status = status_text(pack, window.hours, lang, now, open_now)
    summary = window.summary.get(lang)
    if window.address is not None:
        summary += "\n" + pack.msg("card.address", lang).format(
            address=window.address.get(lang))
    return Card(
        id=window.id, kind=window.kind, name=window.name.get(lang),
        summary=summary, phone=window.phone, tel=window.tel,
        hours=hours_text(pack, window.hours, lang) if window.hours else None,
        open_now=open_now, status=status, url=window.url, mail=window.mail,
    )
