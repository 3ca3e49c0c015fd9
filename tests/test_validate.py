"""`python -m bot validate`: each kind of content error is caught and named by file and field."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.pack.loader import COMMON, CONTENT_ROOT, pack_names
from bot.validate import validate
from tests.pack_helpers import edit_yaml

REPO = Path(__file__).resolve().parents[1]


def _first_window_with(data, field):
    return next(w for w in data if w.get(field))


@pytest.mark.parametrize("name", pack_names())
def test_every_pack_is_clean(name):
    assert validate(name) == []


def test_cli_validate_checks_every_pack():
    proc = subprocess.run([sys.executable, "-m", "bot", "validate"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in pack_names():
        assert f"content pack {name!r} and flows: OK" in proc.stdout


def test_every_city_folder_is_a_pack_and_one_bad_pack_does_not_taint_another(tmp_path,
                                                                              pack_copy):
    shutil.copytree(CONTENT_ROOT / "kyoto", tmp_path / "otherpack")
    edit_yaml(pack_copy / "windows.yaml", lambda d: d[0]["categories"].append("astrology"))
    assert pack_names(tmp_path) == ["otherpack", "testpack"]  # not common/
    assert validate(str(tmp_path / "otherpack")) == []
    assert any("astrology" in e for e in validate(str(pack_copy)))


def test_a_pack_adds_and_overrides_sentences(pack_copy):
    (pack_copy / "messages.ja.yaml").write_text("q:\n  age: 年代は？\nextra: 追加\n",
                                                encoding="utf-8")
    (pack_copy / "messages.en.yaml").write_text("q:\n  age: Age?\nextra: Added\n",
                                                encoding="utf-8")
    from bot.pack import load_pack

    pack = load_pack(pack_copy)
    assert pack.msg("q.age", "ja") == "年代は？" and pack.msg("extra", "en") == "Added"
    assert pack.msg("q.whose", "ja") == load_pack("kyoto").msg("q.whose", "ja")


def test_city_name_fills_shared_sentences():
    from bot.pack import load_pack

    for name in pack_names():
        pack = load_pack(name)
        for lang in ("ja", "en"):
            assert pack.info.name.get(lang) in pack.msg("welcome.body", lang)
            assert all("{city}" not in str(v) for v in pack.messages[lang].values())


def test_phone_not_dialable(pack_copy):
    def change(data):
        _first_window_with(data, "phone")["phone"] = "746-7713"
    edit_yaml(pack_copy / "windows.yaml", change)
    errors = validate(str(pack_copy))
    assert any(e.startswith("windows.yaml: ") and ".phone:" in e and "dialable" in e
               for e in errors), errors


def test_unknown_category(pack_copy):
    edit_yaml(pack_copy / "windows.yaml", lambda d: d[0]["categories"].append("astrology"))
    errors = validate(str(pack_copy))
    assert any("unknown category 'astrology'" in e and e.startswith("windows.yaml:")
               for e in errors), errors


def test_window_in_no_category(pack_copy):
    def change(data):
        data[0]["categories"] = []
    edit_yaml(pack_copy / "windows.yaml", change)
    errors = validate(str(pack_copy))
    assert any("in no category" in e for e in errors), errors


def test_hours_that_do_not_parse(pack_copy):
    def change(data):
        w = next(w for w in data if w.get("hours") and w["hours"].get("weekly"))
        w["hours"]["weekly"][0]["start"] = "8時半"
    edit_yaml(pack_copy / "windows.yaml", change)
    errors = validate(str(pack_copy))
    assert any(".hours.weekly.0.start" in e and "HH:MM" in e for e in errors), errors


def test_message_missing_in_one_language(pack_copy):
    edit_yaml(pack_copy.parent / COMMON / "messages.en.yaml", lambda d: d["q"].pop("ward"))
    errors = validate(str(pack_copy))
    assert "messages.en.yaml: q.ward: missing (present in ja)" in errors


def test_city_message_missing_in_one_language(pack_copy):
    (pack_copy / "messages.ja.yaml").write_text("only_ja: だけ\n", encoding="utf-8")
    errors = validate(str(pack_copy))
    assert "messages.en.yaml: only_ja: missing (present in ja)" in errors


def test_message_the_flow_needs_missing_in_both(pack_copy):
    for lang in ("ja", "en"):
        edit_yaml(pack_copy.parent / COMMON / f"messages.{lang}.yaml", lambda d: d["q"].pop("ward"))
    errors = validate(str(pack_copy))
    assert any("flows/handbook.yaml: message key 'q.ward'" in e for e in errors), errors


def test_missing_source(pack_copy):
    edit_yaml(pack_copy / "hotlines.yaml", lambda d: d[0].pop("source"))
    errors = validate(str(pack_copy))
    assert any(e.startswith("hotlines.yaml: ") and ".source" in e for e in errors), errors


def test_category_without_window(pack_copy):
    def change(data):
        data.append({"id": "astrology", "platform": "その他",
                     "label": {"ja": "星占い", "en": "Stars"}})
    edit_yaml(pack_copy / "categories.yaml", change)
    errors = validate(str(pack_copy))
    assert "categories.yaml: astrology: no window serves this category" in errors


def test_cli_validate_fails_with_every_error(pack_copy):
    edit_yaml(pack_copy / "windows.yaml", lambda d: d[0]["categories"].append("astrology"))
    edit_yaml(pack_copy.parent / COMMON / "messages.ja.yaml", lambda d: d["q"].pop("age"))
    proc = subprocess.run([sys.executable, "-m", "bot", "validate", str(pack_copy)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "astrology" in proc.stdout and "q.age" in proc.stdout
