"""Load a content pack from bot/content/<name>/, collecting every error with its file and field.

A content root holds `common/` (the language: sentences, synonyms, command words, crisis terms,
staff wording — shared by every city) and one folder per city (windows, hotlines, categories,
wards, office hours, and any sentence or word the city adds or overrides). A city's pack is
common + its own files, merged here. A maintainer editing YAML wants the whole list of what is
wrong at once, not the first failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from bot import language
from bot.language import RULES_NAME, SAFE_LOADER, RulesError, default_rules, load_rules
from bot.pack.models import LANGS, Category, Lang, PackInfo, Ward, WardsFile, Window

CONTENT_ROOT = Path(__file__).resolve().parents[1] / "content"
COMMON = "common"
CITY_PLACEHOLDER = "{city}"


class PackError(Exception):
    """Raised with every problem found in a pack; str() lists them one per line."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Pack:
    """A validated content pack: what the bot says and where it points people."""

    root: Path
    info: PackInfo
    categories: dict[str, Category]
    wards: WardsFile
    windows: dict[str, Window]
    messages: dict[Lang, dict[str, Any]] = field(repr=False)
    # Free-text vocabulary shared by every city (bot/content/common/triage.<lang>.yaml).
    triage: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.info.id

    @property
    def common(self) -> Path:
        return common_dir(self.root)

    @property
    def crisis_file(self) -> Path:
        return crisis_file(self.root)

    def msg(self, key: str, lang: Lang) -> Any:
        """A message by dotted key; missing keys were rejected at load, so this cannot fail."""
        return self.messages[lang][key]

    def has_msg(self, key: str) -> bool:
        return all(key in self.messages[lang] for lang in LANGS)

    def ward(self, ward_id: str) -> Ward | None:
        return next((w for w in self.wards.wards if w.id == ward_id), None)

    @property
    def hotlines(self) -> list[Window]:
        return [w for w in self.windows.values() if w.kind == "hotline"]

    def crisis_lines(self, kind: str) -> list[Window]:
        """The hotlines of a crisis reply. Against violence, 110 comes first; to someone
        thinking of suicide we first offer people who listen, with 110/119 still listed."""
        lines = [w for w in self.windows.values() if kind in w.crisis]
        listen_first = kind == "self_harm"
        return sorted(lines, key=lambda w: (listen_first and bool(w.only_when), -w.rank, w.id))


def resolve_pack_dir(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path.resolve()
    return CONTENT_ROOT / str(name_or_path)


def common_dir(pack_dir: Path) -> Path:
    """The language files shared by the packs beside this one (content root / common)."""
    return pack_dir.parent / COMMON


def crisis_file(pack_dir: str | Path) -> Path:
    """A city's own crisis.yaml replaces the common one; most cities use the common terms."""
    root = resolve_pack_dir(pack_dir)
    own = root / "crisis.yaml"
    return own if own.is_file() else common_dir(root) / "crisis.yaml"


def default_pack_name(content_root: Path = CONTENT_ROOT) -> str:
    """The pack served when MUNICIPALITY is unset: bot/content/default.yaml."""
    with (content_root / "default.yaml").open(encoding="utf-8") as fh:
        return str(yaml.safe_load(fh)["municipality"])


def pack_names(content_root: Path = CONTENT_ROOT) -> list[str]:
    """Every city pack under the content root (folders with a pack.yaml)."""
    return sorted(p.name for p in content_root.iterdir()
                  if p.is_dir() and p.name != COMMON and (p / "pack.yaml").is_file())


def _read_yaml(path: Path, errors: list[str]) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return yaml.load(fh, Loader=SAFE_LOADER)  # libyaml when present: quicker start-up
    except FileNotFoundError:
        errors.append(f"{path.name}: file is missing")
    except yaml.YAMLError as exc:
        errors.append(f"{path.name}: not valid YAML: {exc}")
    return None


def _validate(path: Path, data: Any, model: Any, errors: list[str], item_key: str = "id") -> Any:
    """Validate data against a model; errors name the file, the item (by id) and the field."""
    adapter = model if isinstance(model, TypeAdapter) else TypeAdapter(model)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = list(err["loc"])
            where = ".".join(str(p) for p in loc)
            if loc and isinstance(loc[0], int) and isinstance(data, list):
                item = data[loc[0]] if loc[0] < len(data) else None
                if isinstance(item, dict) and item.get(item_key):
                    where = f"{item[item_key]}." + ".".join(str(p) for p in loc[1:])
            errors.append(f"{path.name}: {where}: {err['msg']}")
    return None


def _validate_items(path: Path, data: Any, model: Any, errors: list[str]) -> list[Any]:
    """Validate a YAML list item by item, so one bad window does not hide the good ones."""
    if not isinstance(data, list):
        if data is not None:
            errors.append(f"{path.name}: must be a list")
        return []
    good = []
    for index, item in enumerate(data):
        before = len(errors)
        value = _validate(path, item, model, errors)
        label = item.get("id") if isinstance(item, dict) and item.get("id") else str(index)
        errors[before:] = [e.replace(f"{path.name}: ", f"{path.name}: {label}.", 1)
                           for e in errors[before:]]
        if value is not None:
            good.append(value)
    return good


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested message YAML → dotted keys. Lists (of synonyms) are leaves."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = tree
    return out


def _with_city(value: Any, city: str) -> Any:
    """{city} in a shared sentence or word list becomes this pack's name."""
    if isinstance(value, str):
        return value.replace(CITY_PLACEHOLDER, city)
    if isinstance(value, list):
        return [_with_city(v, city) for v in value]
    return value


def _load_messages(root: Path, errors: list[str],
                   info: PackInfo | None) -> dict[Lang, dict[str, Any]]:
    """Common sentences, then the city's own file (optional) adding or overriding keys."""
    messages: dict[Lang, dict[str, Any]] = {}
    for lang in LANGS:
        table: dict[str, Any] = {}
        common = common_dir(root) / f"messages.{lang}.yaml"
        data = _read_yaml(common, errors)
        if isinstance(data, dict):
            table.update(flatten(data))
        elif data is not None:
            errors.append(f"{COMMON}/{common.name}: must be a mapping")
        own = root / f"messages.{lang}.yaml"
        if own.is_file():
            data = _read_yaml(own, errors)
            if isinstance(data, dict):
                table.update(flatten(data))
            elif data is not None:
                errors.append(f"{own.name}: must be a mapping")
        city = info.name.get(lang) if info is not None else ""
        messages[lang] = {key: _with_city(value, city) for key, value in table.items()}
    keys = {lang: set(m) for lang, m in messages.items()}
    for lang in LANGS:
        for other in LANGS:
            for key in sorted(keys[other] - keys[lang]):
                errors.append(f"messages.{lang}.yaml: {key}: missing (present in {other})")
    for lang, table in messages.items():
        for key, value in table.items():
            if value is None or value == "" or value == []:
                errors.append(f"messages.{lang}.yaml: {key}: empty")
    return messages


def _cross_check(
    categories: dict[str, Category], wards: WardsFile | None, windows: dict[str, Window],
    errors: list[str],
) -> None:
    used: set[str] = set()
    for w in windows.values():
        fname = "hotlines.yaml" if w.kind == "hotline" else "windows.yaml"
        for cat in w.categories:
            if cat not in categories:
                errors.append(f"{fname}: {w.id}.categories: unknown category {cat!r}")
            used.add(cat)
        if not w.categories and not w.crisis and not w.only_when:
            errors.append(f"{fname}: {w.id}.categories: window is in no category")
        if (w.phone or w.hours) and not w.source:
            errors.append(f"{fname}: {w.id}.source: a phone or hours needs a source")
        if w.ward and wards and w.ward not in {x.id for x in wards.wards}:
            errors.append(f"{fname}: {w.id}.ward: unknown ward {w.ward!r}")
    for cat in categories:
        if cat not in used:
            errors.append(f"categories.yaml: {cat}: no window serves this category")
    if wards:
        ward_ids = {x.id for x in wards.wards}
        for group in wards.groups:
            for wid in group.wards:
                if wid not in ward_ids:
                    errors.append(f"wards.yaml: groups.{group.id}: unknown ward {wid!r}")
        for ward in wards.wards:
            if ward.centre and ward.centre not in windows:
                errors.append(f"wards.yaml: {ward.id}.centre: unknown window {ward.centre!r}")


def load_pack(name_or_path: str | Path) -> Pack:
    """Load and validate a pack; raise PackError listing every problem."""
    root = resolve_pack_dir(name_or_path)
    if not root.is_dir():
        raise PackError([f"{root}: no such content pack"])
    errors: list[str] = []
    info = _validate(root / "pack.yaml", _read_yaml(root / "pack.yaml", errors), PackInfo, errors)
    cats_raw = _read_yaml(root / "categories.yaml", errors)
    cats = _validate_items(root / "categories.yaml", cats_raw, Category, errors)
    categories = {c.id: c for c in cats}
    # A city without wards (or districts) has no wards.yaml: the ward question is skipped.
    wards_path = root / "wards.yaml"
    wards = (_validate(wards_path, _read_yaml(wards_path, errors), WardsFile, errors)
             if wards_path.is_file() else WardsFile(groups=[], wards=[], suffixes=None))
    windows: dict[str, Window] = {}
    for fname in ("windows.yaml", "hotlines.yaml"):
        raw = _read_yaml(root / fname, errors)
        for w in _validate_items(root / fname, raw, Window, errors):
            if w.id in windows:
                errors.append(f"{fname}: {w.id}: duplicate window id")
            windows[w.id] = w
    messages = _load_messages(root, errors, info)
    # The analyser's rules first: the triage vocabulary is compiled through the analyser.
    language = _check_language(common_dir(root), errors)
    triage = _load_triage(common_dir(root), errors) if language else {}
    _cross_check(categories, wards, windows, errors)
    if errors or info is None or wards is None:
        raise PackError(errors or [f"{root}: pack could not be loaded"])
    return Pack(root=root, info=info, categories=categories, wards=wards, windows=windows,
                messages=messages, triage=triage)


def _check_language(common: Path, errors: list[str]) -> bool:
    """The analyser's rules can be used. It runs on one file for the whole process, the
    package's (bot/language.py `default_rules`). A pack root of its own may hold a copy
    (common/language.ja.yaml): it is checked so that an edit there is named, and a copy that
    differs from the file the analyser runs on is an error — it would not be used."""
    found: list[str] = []
    try:
        default_rules()
    except RulesError as exc:
        found += [f"{COMMON}/{line}" for line in str(exc).splitlines()]
    copy = common / RULES_NAME
    if not found and copy.is_file() and copy.resolve() != language.RULES_FILE.resolve():
        try:
            load_rules(copy)
        except RulesError as exc:
            found += [f"{COMMON}/{line}" for line in str(exc).splitlines()]
        else:
            if copy.read_bytes() != language.RULES_FILE.read_bytes():
                found.append(f"{COMMON}/{RULES_NAME}: differs from the rules the analyser runs "
                             f"on (bot/content/{COMMON}/{RULES_NAME}), which every pack uses: "
                             "edit that file, or remove this copy")
    errors += found
    return not found


def _load_triage(common: Path, errors: list[str]) -> dict[str, Any]:
    """The common triage vocabulary (bot/triage.py), checked with the pack."""
    from bot.triage import TriageError, load_vocab

    try:
        return load_vocab(common)
    except TriageError as exc:
        errors += [f"common/{line}" for line in str(exc).splitlines()]
        return {}


__all__ = ["CONTENT_ROOT", "Pack", "PackError", "crisis_file", "default_pack_name", "flatten",
           "load_pack", "pack_names"]
