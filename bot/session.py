"""The per-person conversation state, small enough to be one Redis string (≤ 2 KB)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot.pack.models import Lang

HISTORY_LIMIT = 20


class Session(BaseModel):
    model_config = ConfigDict(extra="ignore")

    flow: str = "handbook"
    state: str
    lang: Lang = "ja"
    answers: dict[str, str] = Field(default_factory=dict)
    concerns: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    asked: int = 0
    page: int = 0
    resume: str | None = None
    crisis: str | None = None
    soft: bool = False  # the soft tier's gentle line was shown (bot/crisis_model.py): once only
    history: list[str] = Field(default_factory=list)
    case: str | None = None
    rate_minute: int = 0
    rate_count: int = 0
    # Free text understood, awaiting the resident's tap (bot/triage.py): {"mode": confirm |
    # pick | all | none, "cats": [...], "slots": {...}, "back": state}. `skip`: answers the
    # text gave, whose questions are skipped.
    guess: dict[str, Any] | None = None
    skip: list[str] = Field(default_factory=list)
    # Phone-safe delivery (issue 11): staff messages reach the phone as a neutral notice unless
    # the resident chose `direct`; `unseen` says a notice waits to be opened (`notice.open` is
    # then offered on every question). What it stands for waits sealed (bot.handoff.cases.Unseen).
    direct: bool = False
    unseen: bool = False
    channel: str | None = None  # where the conversation happens (some states are LINE-only)

    def dumps(self) -> str:
        return self.model_dump_json(exclude_defaults=True)

    @classmethod
    def loads(cls, raw: str | bytes) -> Session:
        return cls.model_validate_json(raw)

    def clone(self) -> Session:
        """A copy the engine may change; cheaper than a deep copy (all leaves are immutable)."""
        return self.model_copy(update={"answers": dict(self.answers),
                                       "concerns": list(self.concerns),
                                       "flags": list(self.flags), "history": list(self.history),
                                       "skip": list(self.skip)})

    def enter(self, state: str) -> None:
        self.state = state
        self.page = 0
        self.history = [*self.history, state][-HISTORY_LIMIT:]

    def add_flags(self, flags: list[str]) -> None:
        self.flags = sorted(set(self.flags) | set(flags))
