"""What the dialogue hands over when a resident asks for a person, and what a case holds.

The engine builds a CaseRequest (pure data, no identity). The service layer adds the sealed
address (Fernet, see bot.crypto) that lets staff replies reach the resident, and opens a Case.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

CaseStatus = Literal["new", "claimed", "resolved", "expired"]
Channel = Literal["line", "web"]


class CaseRequest(BaseModel):
    """From the engine: the consented, anonymous summary. Never a name, id or phone."""

    number: str                      # e.g. "K-4F7Q", shown to the resident and to staff
    lang: Literal["ja", "en"] = "ja"
    categories: list[str] = Field(default_factory=list)   # category ids, primary first
    summary: list[tuple[str, str]] = Field(default_factory=list)  # (question, answer) texts
    ward: str | None = None          # ward id or None
    urgent: bool = False             # danger answers or crisis words
    message: str | None = None       # the free text the resident chose to send, if any


class StaffMessage(BaseModel):
    at: float
    who: Literal["resident", "staff", "system"]
    text: str
    id: str = ""   # the event it came from (a LINE/web event id, a Slack event id): recorded
                   # once, and the key of its delivery (a LINE retry key)


class Case(BaseModel):
    number: str
    status: CaseStatus = "new"
    channel: Channel
    pid: str                         # the resident's pseudonym (never the platform id)
    created_at: float
    updated_at: float
    claimed_by: str | None = None    # Slack user id of the staff member
    claimed_at: float | None = None
    resolved_at: float | None = None
    resolved_by: str | None = None   # Slack user id of the staff member who closed it
    forgotten_at: float | None = None  # the resident chose `cmd.forget`: no address, no text
    first_staff_reply_at: float | None = None
    request: CaseRequest
    slack_channel: str | None = None
    slack_ts: str | None = None      # the case message; its thread is the conversation
    thread: list[StaffMessage] = Field(default_factory=list)
