"""Channel-neutral replies: what the engine says, before any platform decides how it looks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# A tap on a card's "this number did not work / was wrong", followed by the window id.
WRONG_PREFIX = "wrong:"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Choice(Frozen):
    label: str
    value: str


class Card(Frozen):
    """A window or hotline: enough to act on it without another tap."""

    id: str
    kind: Literal["window", "hotline"]
    name: str
    summary: str
    phone: str | None = None
    tel: str | None = None
    hours: str | None = None
    open_now: bool | None = None
    status: str | None = None
    url: str | None = None
    mail: str | None = None


class Text(Frozen):
    type: Literal["text"] = "text"
    text: str
    urgent: bool = False


class Cards(Frozen):
    type: Literal["cards"] = "cards"
    title: str
    cards: list[Card]
    urgent: bool = False


class Question(Frozen):
    """A prompt and its choices; `state` lets a channel tell a stale tap from a fresh one."""

    type: Literal["question"] = "question"
    text: str
    choices: list[Choice]
    state: str


Reply = Annotated[Text | Cards | Question, Field(discriminator="type")]


def offers_a_way_on(replies: list[Text | Cards | Question]) -> bool:
    """Safety rule 2: a reply must carry choices, a window or a hotline."""
    return any(
        (isinstance(r, Question) and r.choices) or (isinstance(r, Cards) and r.cards)
        for r in replies
    )
