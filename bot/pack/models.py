"""pydantic models of a content pack; the YAML files in bot/content/<pack>/ must fit them.

Every phone number and every opening hour carries a `source` (seed file name or public page),
so a maintainer can check it against where it came from.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Lang = Literal["ja", "en"]
LANGS: tuple[Lang, ...] = ("ja", "en")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Whose = Literal["self", "family", "friend", "supporter"]
AgeBand = Literal["u18", "18_39", "40_64", "65_plus"]
Channel = Literal["phone", "mail", "visit", "home_visit", "chat", "web"]

# Dialable forms in Japan: area-coded numbers, free dial / navi dial, # short numbers, 3-digit
# emergency and abuse numbers. Anything else is a typo or a number written without area code.
PHONE_RE = re.compile(
    r"^(0\d{1,4}-\d{1,4}-\d{3,4}|0120-\d{2,3}-\d{3,4}|0120-\d-\d{5}|0570-\d{2,3}-\d{3,4}"
    r"|#\d{4}|1\d{2})$"
)
HHMM_RE = re.compile(r"^([01]\d|2[0-4]):[0-5]\d$")
MMDD_RE = re.compile(r"^(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class I18n(Strict):
    """A sentence in every language the bot speaks; a missing language is a content error."""

    ja: str = Field(min_length=1)
    en: str = Field(min_length=1)

    def get(self, lang: Lang) -> str:
        return getattr(self, lang)


class _Span(Strict):
    """From `start` to `end`, both HH:MM (the part weekly and monthly periods share)."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not HHMM_RE.match(value):
            raise ValueError(f"time {value!r} is not HH:MM")
        return value


class Period(_Span):
    days: list[Weekday] = Field(min_length=1)

    @model_validator(mode="after")
    def _order(self) -> Period:
        if self.start >= self.end:
            raise ValueError(f"period starts at {self.start} but ends at {self.end}")
        return self


class MonthlyPeriod(_Span):
    """A day of every month, e.g. the 10th from 8:00 to 8:00 the next day (`next_day: true`).

    Monthly periods are kept whatever the weekday, holidays or closed dates: they are the
    extra hours a line adds on that day of the month.
    """

    day: int = Field(ge=1, le=31)
    next_day: bool = False

    @model_validator(mode="after")
    def _order(self) -> MonthlyPeriod:
        if not self.next_day and self.start >= self.end:
            raise ValueError(f"period starts at {self.start} but ends at {self.end} "
                             "(say next_day: true if it ends the next day)")
        return self


class Hours(Strict):
    """Opening hours in Asia/Tokyo. `always` means every day, all day (24-hour lines);
    `weekly` periods by weekday; `monthly` periods on a day of every month."""

    always: bool = False
    weekly: list[Period] = Field(default_factory=list)
    monthly: list[MonthlyPeriod] = Field(default_factory=list)
    holidays: Literal["closed", "open"] = "closed"
    closed_dates: list[str] = Field(default_factory=list)
    note: I18n | None = None
    source: str = Field(min_length=3)

    @field_validator("closed_dates")
    @classmethod
    def _mmdd(cls, values: list[str]) -> list[str]:
        for value in values:
            if not MMDD_RE.match(value):
                raise ValueError(f"closed date {value!r} is not MM-DD")
        return values

    @model_validator(mode="after")
    def _some_hours(self) -> Hours:
        if self.always == bool(self.weekly or self.monthly):
            raise ValueError("hours need either always: true or weekly/monthly periods, "
                             "not both")
        return self


class Window(Strict):
    """A support window or hotline that the bot can point a resident to."""

    id: str
    kind: Literal["window", "hotline"] = "window"
    name: I18n
    summary: I18n
    categories: list[str] = Field(default_factory=list)
    whose: list[Whose] | None = None
    ages: list[AgeBand] | None = None
    flags: list[str] = Field(default_factory=list)
    only_when: list[str] = Field(default_factory=list)
    channels: list[Channel] = Field(default_factory=list)
    phone: str | None = None
    mail: str | None = None
    url: str | None = None
    address: I18n | None = None
    hours: Hours | None = None
    ward: str | None = None
    rank: int = 0
    crisis: list[str] = Field(default_factory=list)
    source: str = Field(min_length=3)
    # The day someone last checked phone, hours and address against `source` (for seeds: the
    # seed's own date). `python -m bot windows --check` lists the oldest first.
    confirmed: date | None = None
    # For staff only (never rendered to a resident): caveats, what to re-check.
    note: str | None = None

    @property
    def reachable(self) -> bool:
        """Can a resident who is shown this window reach it? (phone, mail, web or address)"""
        return bool(self.phone or self.mail or self.url or self.address)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not ID_RE.match(value):
            raise ValueError(f"id {value!r} must be lower-case letters, digits and _")
        return value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is not None and not PHONE_RE.match(value):
            raise ValueError(f"phone {value!r} is not in a dialable form (e.g. 075-746-7713)")
        return value

    @property
    def tel(self) -> str | None:
        """The `tel:` link; '#' must be percent-encoded in a URI."""
        if self.phone is None:
            return None
        return "tel:" + self.phone.replace("-", "").replace("#", "%23")


class Category(Strict):
    id: str
    platform: str = Field(min_length=1)
    label: I18n
    short: I18n | None = None


class Ward(Strict):
    id: str
    name: I18n
    centre: str | None = None


class WardGroup(Strict):
    id: str
    label: I18n
    wards: list[str] = Field(min_length=1, max_length=12)


class WardSuffixes(Strict):
    """How the ward names are written, so that free text naming a ward is found (bot/triage.py):
    a ward also without `ward`, a branch office area by the word before `branch`."""

    ward: str = Field(min_length=1)
    branch: str = ""  # a city without branch offices leaves it out


class WardsFile(Strict):
    groups: list[WardGroup]
    wards: list[Ward]
    suffixes: WardSuffixes | None  # required in wards.yaml; None only for a city without wards

    @model_validator(mode="after")
    def _suffixes_with_wards(self) -> WardsFile:
        # `suffixes: null` beside wards would quietly stop finding ward names in free text.
        if self.wards and self.suffixes is None:
            raise ValueError("suffixes: required when the city has wards")
        return self


class PackInfo(Strict):
    id: str
    name: I18n
    timezone: Literal["Asia/Tokyo"] = "Asia/Tokyo"
    case_prefix: str = Field(default="K", pattern=r"^[A-Z]$")
    office_hours: Hours
