"""Channel-neutral replies → LINE messages (the Messaging API's JSON), within LINE's limits.

Limits (Messaging API reference): 5 messages per reply/push, 13 quick-reply items, action labels
of 20 characters, postback data of 300 characters, text of 5000 characters, a carousel of 12
bubbles, altText of 400 characters.

We build the JSON ourselves rather than line-bot-sdk's message models: profiling showed the
models' construction and serialisation (pydantic v1) to be about a third of the server's CPU
per event. The SDK's own models still check every rendered message in the tests
(`Message.from_dict`); LineApi sends them (see line_api for why not the SDK's client).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from bot.replies import WRONG_PREFIX, Card, Cards, Question, Reply, Text

MAX_MESSAGES = 5
MAX_QUICK = 13
MAX_LABEL = 20
MAX_TEXT = 5000
MAX_BUBBLES = 12
MAX_ALT = 400
MAX_DATA = 300
URGENT_COLOR = "#B3261E"
ACCENT_COLOR = "#1B6E5A"


@lru_cache(maxsize=4096)
def postback_data(state: str | None, value: str) -> str:
    """What a quick reply sends back: the state it belongs to, so stale taps can be told.

    Memoised: the same few (state, value) pairs of the flow come back on every answer, and
    encoding them was the largest part of rendering one (bounded; strings only)."""
    return json.dumps({"s": state, "v": value}, separators=(",", ":"))[:MAX_DATA]


def parse_postback(data: str) -> tuple[str | None, str] | None:
    """Postback data → (state, value), or None when it is not ours (forged or garbled)."""
    try:
        obj = json.loads(data)
    except (ValueError, TypeError):
        return None
    if not isinstance(obj, dict):
        return None
    state, value = obj.get("s"), obj.get("v")
    if not isinstance(value, str) or not value or len(value) > 100:
        return None
    if state is not None and (not isinstance(state, str) or len(state) > 100):
        return None
    return state, value


def _label(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(text: str, **style: Any) -> dict:
    return {"type": "text", "text": text, "wrap": True, **style}


def _uri_button(label: str, uri: str, **style: Any) -> dict:
    return {"type": "button", "height": "sm", **style,
            "action": {"type": "uri", "label": _label(label), "uri": uri}}


def _bubble(card: Card, urgent: bool, call_label: str, site_label: str,
            wrong_label: str | None = None) -> dict:
    body = [_text(card.name, weight="bold", size="md",
                  **({"color": URGENT_COLOR} if urgent else {})),
            _text(card.summary, size="sm", color="#555555")]
    if card.hours:
        body.append(_text(card.hours, size="xs", color="#666666"))
    if card.status:
        body.append(_text(card.status, size="sm", weight="bold",
                          color="#888888" if card.open_now is False else ACCENT_COLOR))
    buttons = []
    if card.tel and card.phone:
        buttons.append(_uri_button(f"{call_label} {card.phone}", card.tel, style="primary",
                                   color=URGENT_COLOR if urgent else ACCENT_COLOR))
    if card.url:
        buttons.append(_uri_button(site_label, card.url, style="link"))
    if wrong_label and card.tel and not urgent:
        # "This number did not work / was wrong": counted per window, sent to staff.
        buttons.append({"type": "button", "height": "sm", "style": "link", "action": {
            "type": "postback", "label": _label(wrong_label),
            "data": postback_data(None, f"{WRONG_PREFIX}{card.id}"),
            "displayText": _clip(wrong_label, 300)}})
    bubble = {"type": "bubble", "size": "kilo",
              "body": {"type": "box", "layout": "vertical", "spacing": "sm", "contents": body}}
    if buttons:
        bubble["footer"] = {"type": "box", "layout": "vertical", "spacing": "sm",
                            "contents": buttons}
    return bubble


def _alt(cards: Cards) -> str:
    parts = [cards.title] + [f"{c.name} {c.phone or ''}".strip() for c in cards.cards]
    return _clip(" / ".join(parts), MAX_ALT)


def _question_text(q: Question) -> str:
    numbered = "\n".join(f"{i}. {c.label}" for i, c in enumerate(q.choices, 1))
    return f"{q.text}\n\n{numbered}"


def _merge_once(blocks: list[tuple[str, Any]]) -> bool:
    for i in range(len(blocks) - 1):
        (k1, v1), (k2, v2) = blocks[i], blocks[i + 1]
        if k1 == k2 == "cards" and sum(len(c.cards) for c in [*v1, *v2]) <= MAX_BUBBLES:
            blocks[i : i + 2] = [("cards", [*v1, *v2])]
            return True
        if k1 == "text" and k2 == "text":
            blocks[i : i + 2] = [("text", f"{v1}\n\n{v2}")]
            return True
        if k1 == "text" and k2 == "question":
            blocks[i : i + 2] = [("question", v2.model_copy(update={"text": f"{v1}\n\n{v2.text}"}))]
            return True
    return False


def _fit(blocks: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Merge neighbours until at most 5 messages remain; never drop the closing question."""
    while len(blocks) > MAX_MESSAGES and _merge_once(blocks):
        pass
    if len(blocks) > MAX_MESSAGES:
        blocks = blocks[: MAX_MESSAGES - 1] + blocks[-1:]
    return blocks


def render(replies: list[Reply], call_label: str, site_label: str,
           wrong_label: str | None = None) -> list[dict]:
    """Render replies in order; texts merge and carousels join so that at most 5 remain."""
    blocks: list[tuple[str, Any]] = []
    for r in replies:
        if isinstance(r, Text):
            if blocks and blocks[-1][0] == "text":
                blocks[-1] = ("text", f"{blocks[-1][1]}\n\n{r.text}")
            else:
                blocks.append(("text", r.text))
        elif isinstance(r, Cards) and r.cards:
            blocks.append(("cards", [r]))
        elif isinstance(r, Question):
            blocks.append(("question", r))
    blocks = _fit(blocks)
    messages: list[dict] = []
    for kind, value in blocks[:MAX_MESSAGES]:
        if kind == "text":
            messages.append({"type": "text", "text": _clip(value)})
        elif kind == "question":
            q: Question = value
            messages.append({"type": "text", "text": _clip(_question_text(q)), "quickReply": {
                "items": [{"type": "action", "action": {
                    "type": "postback", "label": _label(c.label),
                    "data": postback_data(q.state, c.value),
                    "displayText": _clip(c.label, 300)}} for c in q.choices[:MAX_QUICK]]}})
        else:
            groups: list[Cards] = value
            bubbles = [_bubble(c, g.urgent, call_label, site_label, wrong_label)
                       for g in groups for c in g.cards][:MAX_BUBBLES]
            alt = " / ".join(_alt(g) for g in groups)
            messages.append({"type": "flex", "altText": _clip(alt, MAX_ALT),
                             "contents": {"type": "carousel", "contents": bubbles}})
    # LINE shows quick replies only on the last message of a reply: the question is last.
    return messages


class Rendered(list):
    """Rendered messages with their JSON (the API body's "messages", as `json.dumps` writes
    it), made once. Shared between events and threads: never changed after it is made."""

    __slots__ = ("json",)

    def __init__(self, messages: list[dict]):
        super().__init__(messages)
        self.json = json.dumps(messages)


_RENDERED: dict[tuple[int, ...], tuple[tuple[Any, ...], Rendered]] = {}
RENDERED_MAX = 512


def render_once(replies: list[Reply], call_label: str, site_label: str,
                wrong_label: str | None = None) -> list[dict]:
    """`render`, remembered for answers made only of questions: the engine hands out one
    Question object per state and language, so most answers of a walk are replies already
    rendered (rendering and encoding a question's quick replies cost ~60 µs an answer,
    bench.stages). The key is the objects' identity (replies hold lists, so they cannot be
    hashed), checked on every hit and kept alive by the entry. Anything else — texts, cards,
    a staff message revealed on a shared phone — is rendered afresh and never kept: it would
    not come back, and a person's words must not outlive their answer. Bounded: emptied
    when full."""
    if not replies or not all(type(r) is Question for r in replies):
        return render(replies, call_label, site_label, wrong_label)
    key = (id(call_label), id(site_label), id(wrong_label), *map(id, replies))
    hit = _RENDERED.get(key)
    if hit is not None and len(hit[0]) == len(replies) + 3 and all(
            a is b for a, b in zip(hit[0], (call_label, site_label, wrong_label, *replies),
                                   strict=True)):
        return hit[1]
    rendered = Rendered(render(replies, call_label, site_label, wrong_label))
    if len(_RENDERED) >= RENDERED_MAX:
        _RENDERED.clear()
    _RENDERED[key] = ((call_label, site_label, wrong_label, *replies), rendered)
    return rendered
