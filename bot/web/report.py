"""The staff report: the month's figures at a glance, as charts drawn on the server.

  GET /staff/report?month=YYYY-MM        the page (charts as inline PNG)
  GET /staff/report.csv?month=&publish=1 the month's tidy CSV (publish: cells < 5 suppressed)

Behind STAFF_REPORT_TOKEN (`Authorization: Bearer <token>` or `?token=`, compared in constant
time); when the setting is unset the page does not exist (404). Everything on the page is a
published figure: a count below 5 is drawn as a hatched band from 0 to 5 labelled with the
pack's small-cell words, never as its exact value.

Charts are drawn with matplotlib's Agg canvas (no display, no pyplot state shared between
threads). Axis labels are Japanese when a Japanese-capable font is installed, else the pack's
English labels; fonts are never downloaded.
"""

from __future__ import annotations

import base64
import hmac
import io
import logging
import re
from collections import Counter
from datetime import date, timedelta
from functools import cache
from typing import Any

import matplotlib
import redis
from flask import Blueprint, Response, abort, current_app, render_template, request
from matplotlib.figure import Figure

from bot import figures, logs
from bot.figures import SMALL_CELL, Row
from bot.handoff.notify import load_labels
from bot.redisconn import UNAVAILABLE

matplotlib.use("Agg")  # no display; figures are drawn into PNG bytes
bp = Blueprint("staff_report", __name__, template_folder="templates")
MONTH_RE = re.compile(r"(\d{4})-(\d{2})")
JAPANESE_FONTS = ("Noto Sans CJK JP", "Noto Sans JP", "IPAexGothic", "IPAGothic", "IPAPGothic",
                  "TakaoGothic", "Source Han Sans JP", "VL Gothic", "Hiragino Sans")
HANDOFF = ("handoff_opened", "handoff_claimed", "handoff_resolved", "handoff_expired")
TOP_WINDOWS = 15
log = logs.get("report")


@cache
def japanese_font() -> str | None:
    """The name of an installed font that can draw Japanese, or None."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    found = next((name for name in JAPANESE_FONTS if name in installed), None)
    if found:
        matplotlib.rcParams["font.family"] = [found, "DejaVu Sans"]
    return found


def _services() -> Any:
    return current_app.extensions["tsunagu"]


def authorised() -> None:
    """404 when the report is off; 401 unless the token matches (constant-time)."""
    token = _services().settings.staff_report_token
    if not token:
        abort(404)
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    given = given or request.args.get("token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        abort(Response("unauthorised\n", 401, {"WWW-Authenticate": "Bearer"}))


def month_range(raw: str | None) -> tuple[date, date]:
    """The first and last day of `YYYY-MM` (default: this month in Tokyo); 400 if malformed."""
    if raw:
        found = MONTH_RE.fullmatch(raw)
        if not found or not 1 <= int(found[2]) <= 12 or not 2000 <= int(found[1]) <= 2999:
            abort(Response("month must be YYYY-MM\n", 400))
        first = date(int(found[1]), int(found[2]), 1)
    else:
        first = figures.today().replace(day=1)
    last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    return first, last


def month_rows(first: date, last: date) -> list[Row]:
    """The month's counts, or a 503 naming why: on a Redis Cluster a day's counts are spread
    over every node, so while one node has no primary the month cannot be read whole — and a
    partial month must never be shown, or published, as the month."""
    services = _services()
    try:
        return services.figures.read(first, last)
    except (redis.RedisError, *UNAVAILABLE) as exc:
        logs.event(log, "report_unavailable", logging.WARNING, error=type(exc).__name__)
        text = load_labels(services.settings.municipality)["report.unavailable"]
        abort(Response(text + "\n", 503, {"Content-Type": "text/plain; charset=utf-8",
                                           "Retry-After": "60", "Cache-Control": "no-store"}))


@bp.get("/staff/report.csv")
def report_csv() -> Any:
    authorised()
    first, last = month_range(request.args.get("month"))
    rows = month_rows(first, last)
    small = _small_words("ja") if request.args.get("publish") == "1" else None
    name = f"tsunagu-{first:%Y-%m}{'-published' if small else ''}.csv"
    return Response(figures.to_csv(rows, small), 200, {
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-store"})


@bp.get("/staff/report")
def report_page() -> Any:
    authorised()
    first, last = month_range(request.args.get("month"))
    services = _services()
    rows = month_rows(first, last)
    labels = load_labels(services.settings.municipality)
    charts = [{"title": labels[f"report.chart.{name}"], "png": _png(fig)}
              for name, fig in Charts(services, rows, first, last).all()]
    prev_month = (first - timedelta(days=1)).strftime("%Y-%m")
    next_month = (last + timedelta(days=1)).strftime("%Y-%m")
    resp = Response(render_template(
        "report.html", t={k[len("report."):]: v for k, v in labels.items()
                          if k.startswith("report.")},
        month=first.strftime("%Y-%m"), prev_month=prev_month, next_month=next_month,
        charts=charts, small=_small_words("ja"), empty=not rows))
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"  # the token may be in the URL
    return resp


def _small_words(lang: str) -> str:
    return str(_services().pack.msg("figures.small_cell", lang))


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode()


class Charts:
    """The month's charts from the stored rows; labels in Japanese when a font can draw them."""

    def __init__(self, services: Any, rows: list[Row], first: date, last: date):
        self.pack = services.pack
        self.flow = services.engine.flow
        self.rows = rows
        self.first, self.last = first, last
        self.font = japanese_font()
        self.lang = "ja" if self.font else "en"
        self.small = str(self.pack.msg("figures.small_cell", self.lang))
        self.staff = load_labels(services.settings.municipality) if self.font else {}
        self.totals: Counter[tuple[str, str]] = Counter()
        for r in rows:
            self.totals[r.measure, r.key] += r.count

    def of(self, measure: str) -> dict[str, int]:
        return {k: n for (m, k), n in self.totals.items() if m == measure}

    def all(self) -> list[tuple[str, Figure]]:
        return [
            ("daily", self.daily()),
            ("category", self.bars(self._ordered("category", list(self.pack.categories)),
                                   horizontal=True)),
            ("whose", self.bars(self._ordered("whose", None))),
            ("age", self.bars(self._ordered("age", None))),
            ("ward", self.bars(self._ordered("ward", [w.id for w in self.pack.wards.wards]),
                               horizontal=True)),
            ("hour", self.bars([(f"{h:02d}", self.of("hour").get(f"{h:02d}", 0))
                                for h in range(24)], wide=True)),
            ("dropoff", self.bars(self._dropoff(), horizontal=True)),
            ("crisis", self.bars(self._ordered("crisis", None))),
            ("handoff", self.bars([(self._label("handoff", m), sum(self.of(m).values()))
                                   for m in HANDOFF]
                                  + [(self._label("first_reply", k), n) for k, n in
                                     self._ordered("handoff_first_reply",
                                                   [b for _, b in figures.FIRST_REPLY_BUCKETS]
                                                   + ["over_3d"], label=False)])),
            ("feedback", self.bars([(self._label(m, k), n) for m in (
                "feedback", "followup_optin", "followup_answer")
                for k, n in sorted(self.of(m).items())])),
            ("wrong_number", self.bars(self._top("wrong_number"), horizontal=True)),
        ]

    # -- data --------------------------------------------------------------------------------
    def _label(self, measure: str, key: str) -> str:
        """A key as staff read it: the pack's names, else the id."""
        pack, lang = self.pack, self.lang
        if measure in ("category", "category_primary", "category_other"):
            cat = pack.categories.get(key)
            return (cat.short or cat.label).get(lang) if cat else key
        if measure == "ward":
            ward = pack.ward(key)
            if ward:
                return ward.name.get(lang)
        if measure in ("wrong_number", "window_shown") and key in pack.windows:
            return pack.windows[key].name.get(lang)
        staff_key = f"report.key.{measure}.{key}"
        if staff_key in self.staff:
            return self.staff[staff_key]
        if self.lang == "ja" and pack.has_msg(f"{measure}.{key}"):
            text = pack.msg(f"{measure}.{key}", lang)
            if isinstance(text, str):
                return text
        return key

    def _ordered(self, measure: str, order: list[str] | None,
                 label: bool = True) -> list[tuple[str, int]]:
        counts = self.of(measure)
        keys = [k for k in (order or []) if k in counts] + sorted(
            (k for k in counts if not order or k not in order), key=lambda k: -counts[k])
        return [(self._label(measure, k) if label else k, counts[k]) for k in keys]

    def _dropoff(self) -> list[tuple[str, int]]:
        """Conversations that stopped at each question (silence or a quitting command)."""
        stopped = self.of("stopped_at")
        return [(self._label("state", name), stopped.get(name, 0))
                for name, state in self.flow.states.items() if state.kind == "question"]

    def _top(self, measure: str) -> list[tuple[str, int]]:
        counts = sorted(self.of(measure).items(), key=lambda kv: -kv[1])[:TOP_WINDOWS]
        return [(self._label(measure, k), n) for k, n in counts]

    # -- drawing -----------------------------------------------------------------------------
    def _figure(self, width: float, height: float) -> Figure:
        return Figure(figsize=(width, height), layout="constrained")

    def daily(self) -> Figure:
        """Conversations started and completed, day by day."""
        days, day = [], self.first
        while day <= self.last:
            days.append(day.isoformat())
            day += timedelta(days=1)
        by_day: dict[tuple[str, str], int] = Counter()
        for r in self.rows:
            if r.measure in ("conversations_started", "conversations_completed"):
                by_day[r.date, r.measure] += r.count
        fig = self._figure(10, 3.2)
        ax = fig.subplots()
        width = 0.4
        for i, (measure, colour) in enumerate((("conversations_started", "#2f6f9f"),
                                               ("conversations_completed", "#6fae5b"))):
            values = [by_day.get((d, measure), 0) for d in days]
            xs = [x + (i - 0.5) * width for x in range(len(days))]
            self._draw(ax, xs, values, width, colour, label=self._label("series", measure),
                       annotate=False)
        ax.set_xticks(range(len(days)), [d[-2:] for d in days], fontsize=8)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_ylim(bottom=0)
        return fig

    def bars(self, items: list[tuple[str, int]], horizontal: bool = False,
             wide: bool = False) -> Figure:
        n = max(len(items), 1)
        if horizontal:
            fig = self._figure(8, 0.8 + 0.32 * n)
        else:
            fig = self._figure(10 if wide else 7, 3.2)
        ax = fig.subplots()
        labels = [label for label, _ in items]
        values = [v for _, v in items]
        self._draw(ax, list(range(len(items))), values, 0.7, "#2f6f9f", horizontal=horizontal)
        if horizontal:
            ax.set_yticks(range(len(items)), labels, fontsize=9)
            ax.invert_yaxis()
            ax.set_xlim(left=0, right=max([*values, SMALL_CELL]) * 1.15)
        else:
            ax.set_xticks(range(len(items)), labels, fontsize=8,
                          rotation=0 if wide or n <= 6 else 30,
                          ha="center" if wide or n <= 6 else "right")
            ax.set_ylim(bottom=0, top=max([*values, SMALL_CELL]) * 1.15)
        if not any(values):
            ax.set_axis_off()
            ax.text(0.5, 0.5, self.staff.get("report.no_data", "no data"), ha="center",
                    va="center", transform=ax.transAxes, fontsize=11, color="#777")
        return fig

    def _draw(self, ax: Any, xs: list[float], values: list[int], width: float, colour: str,
              horizontal: bool = False, label: str | None = None,
              annotate: bool = True) -> None:
        """Bars; a small cell (1-4) is a hatched band from 0 to 5, labelled, never exact."""
        exact = [v if v >= SMALL_CELL or v == 0 else 0 for v in values]
        small = [SMALL_CELL if 0 < v < SMALL_CELL else 0 for v in values]
        bar = ax.barh if horizontal else ax.bar
        bar(xs, exact, width, color=colour, label=label)
        if any(small):
            bar(xs, small, width, color="none", edgecolor=colour, hatch="///", linewidth=0.6)
        if not annotate:
            return
        for x, v in zip(xs, values, strict=True):
            if v == 0:
                continue
            text = str(v) if v >= SMALL_CELL else self.small
            height = max(v, SMALL_CELL)
            if horizontal:
                ax.text(height, x, f" {text}", va="center", fontsize=8)
            else:
                ax.text(x, height, text, ha="center", va="bottom", fontsize=8)
