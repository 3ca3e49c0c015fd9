"""`python -m bot validate`: each kind of content error is caught and named by file and field."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.pack.loader import CONTENT_ROOT
from bot.validate import validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pack_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "testpack"
    shutil.copytree(CONTENT_ROOT / "kyoto", dest)
    return dest


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _first_window_with(data, field):
    return next(w for w in data if w.get(field))


def test_kyoto_pack_is_clean():
    assert validate("kyoto") == []


def test_cli_validate_exits_zero_on_kyoto():
    proc = subprocess.run([sys.executable, "-m", "bot", "validate"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


def test_phone_not_dialable(pack_copy):
    def change(data):
        _first_window_with(data, "phone")["phone"] = "746-7713"
    _edit(pack_copy / "windows.yaml", change)
    errors = validate(str(pack_copy))
    assert any(e.startswith("windows.yaml: ") and ".phone:" in e and "dialable" in e
               for e in errors), errors


def test_unknown_category(pack_copy):
    _edit(pack_copy / "windows.yaml", lambda d: d[0]["categories"].append("astrology"))
    errors = validate(str(pack_copy))
    assert any("unknown category 'astrology'" in e and e.startswith("windows.yaml:")
               for e in errors), errors


def test_window_in_no_category(pack_copy):
    def change(data):
        data[0]["categories"] = []
    _edit(pack_copy / "windows.yaml", change)
    errors = validate(str(pack_copy))
    assert any("in no category" in e for e in errors), errors


def test_hours_that_do_not_parse(pack_copy):
    def change(data):
        w = next(w for w in data if w.get("hours") and w["hours"].get("weekly"))
        w["hours"]["weekly"][0]["start"] = "8時半"
    _edit(pack_copy / "windows.yaml", change)
    errors = validate(str(pack_copy))
    assert any(".hours.weekly.0.start" in e and "HH:MM" in e for e in errors), errors


def test_message_missing_in_one_language(pack_copy):
    _edit(pack_copy / "messages.en.yaml", lambda d: d["q"].pop("ward"))
    errors = validate(str(pack_copy))
    assert "messages.en.yaml: q.ward: missing (present in ja)" in errors


def test_message_the_flow_needs_missing_in_both(pack_copy):
    for lang in ("ja", "en"):
        _edit(pack_copy / f"messages.{lang}.yaml", lambda d: d["q"].pop("ward"))
    errors = validate(str(pack_copy))
    assert any("flows/handbook.yaml: message key 'q.ward'" in e for e in errors), errors


def test_missing_source(pack_copy):
    _edit(pack_copy / "hotlines.yaml", lambda d: d[0].pop("source"))
    errors = validate(str(pack_copy))
    assert any(e.startswith("hotlines.yaml: ") and ".source" in e for e in errors), errors


def test_category_without_window(pack_copy):
    def change(data):
        data.append({"id": "astrology", "platform": "その他",
                     "label": {"ja": "星占い", "en": "Stars"}})
    _edit(pack_copy / "categories.yaml", change)
    errors = validate(str(pack_copy))
    assert "categories.yaml: astrology: no window serves this category" in errors


def test_cli_validate_fails_with_every_error(pack_copy):
    _edit(pack_copy / "windows.yaml", lambda d: d[0]["categories"].append("astrology"))
    _edit(pack_copy / "messages.ja.yaml", lambda d: d["q"].pop("age"))
    proc = subprocess.run([sys.executable, "-m", "bot", "validate", str(pack_copy)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "astrology" in proc.stdout and "q.age" in proc.stdout
