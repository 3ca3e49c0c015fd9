"""Which windows and lines to re-check first: each with its source and `confirmed` date.

`python -m bot windows --check` prints this list for the city team, oldest confirmation first
(never recorded before any date), so the numbers and hours most likely to be stale come first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from bot.pack.loader import Pack

NEVER = "never"


@dataclass(frozen=True)
class Row:
    confirmed: date | None
    kind: str
    id: str
    contact: str
    source: str
    hours_source: str | None
    note: str | None = None

    def line(self) -> str:
        when = self.confirmed.isoformat() if self.confirmed else NEVER
        text = f"{when:10}  {self.kind:7}  {self.id:32}  {self.contact:16}  {self.source}"
        if self.hours_source and self.hours_source != self.source:
            text += f"  (hours: {self.hours_source})"
        if self.note:
            text += f"  [note: {' '.join(self.note.split())}]"
        return text


def rows(pack: Pack) -> list[Row]:
    """Every window and line, the never-confirmed first, then oldest to newest."""
    out = []
    for w in pack.windows.values():
        contact = w.phone or w.mail or ("url" if w.url else "address" if w.address else "-")
        out.append(Row(confirmed=w.confirmed, kind=w.kind, id=w.id, contact=contact,
                       source=w.source, hours_source=w.hours.source if w.hours else None,
                       note=w.note))
    return sorted(out, key=lambda r: (r.confirmed is not None, r.confirmed or date.min, r.id))


def report(pack: Pack) -> str:
    body = [r.line() for r in rows(pack)]
    header = f"{'confirmed':10}  {'kind':7}  {'id':32}  {'contact':16}  source"
    return "\n".join([header, *body]) + "\n"
