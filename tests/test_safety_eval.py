"""Crisis detection: the evaluation set, normalisation, and the terms file as data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.safety import CrisisDetector, evaluate
from bot.textnorm import normalize

REPO = Path(__file__).resolve().parents[1]
CRISIS = REPO / "bot" / "content" / "kyoto" / "crisis.yaml"
EVAL = REPO / "tests" / "data" / "safety_eval.yaml"


@pytest.fixture(scope="module")
def detector() -> CrisisDetector:
    return CrisisDetector.from_file(CRISIS)


def test_evaluation_set_is_large_enough():
    data = yaml.safe_load(EVAL.read_text(encoding="utf-8"))
    assert len(data["risk"]) >= 150
    assert len(data["ordinary"]) >= 100
    assert all(isinstance(t, str) for t in data["ordinary"])


def test_full_recall_and_few_false_positives(detector):
    report = evaluate(detector, EVAL)
    assert report.misses == [], report.format()
    assert report.recall == 1.0
    assert report.false_positive_rate <= 0.05, report.format()


def test_each_risk_phrasing_has_the_right_kind(detector):
    report = evaluate(detector, EVAL)
    assert report.wrong_kind == [], report.format()


def test_cli_prints_recall_and_misses():
    proc = subprocess.run([sys.executable, "-m", "bot", "eval-safety"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recall:             100.0%" in proc.stdout
    assert "false positives:" in proc.stdout


@pytest.mark.parametrize(("raw", "expected"), [
    ("ｼﾆﾀｲ", "しにたい"),          # half-width kana
    ("シニタイ", "しにたい"),        # katakana folded
    ("し に た い！", "しにたい"),    # spaces and punctuation
    ("しにたいいいい", "しにたい"),  # stretched
    ("しにたーい", "しにたい"),      # long-vowel mark
    ("ＯＤ", "od"),                 # full-width letters
    ("１２", "12"),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_latin_terms_need_word_edges(detector):
    assert detector.detect("ODした").kind == "self_harm"
    assert detector.detect("good food") is None
    assert detector.detect("5kms run") is None


def test_exclusions_cancel_only_their_span(detector):
    assert detector.detect("死ぬほど笑った") is None
    assert detector.detect("死ぬほど疲れた、もう死にたい").kind == "self_harm"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "crisis.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_a_term_added_by_staff_works_without_code(tmp_path):
    data = yaml.safe_load(CRISIS.read_text(encoding="utf-8"))
    assert CrisisDetector.from_file(_write(tmp_path, data)).detect("ぴえん超えてぱおん") is None
    data["kinds"]["self_harm"]["terms"].append("ぱおん")
    found = CrisisDetector.from_file(_write(tmp_path, data)).detect("ぴえん超えてパオン")
    assert found is not None and found.kind == "self_harm"


def test_malformed_terms_file_names_the_entry(tmp_path):
    bad_regex = {"version": 1, "kinds": {"self_harm": {"patterns": ["(unclosed"]}}}
    with pytest.raises(ValueError, match=r"kinds\.self_harm\.patterns.*unclosed"):
        CrisisDetector.from_file(_write(tmp_path, bad_regex))
    unknown = {"version": 1, "kinds": {"sadness": {"terms": ["x"]}}}
    with pytest.raises(ValueError, match="unknown crisis kind"):
        CrisisDetector.from_file(_write(tmp_path, unknown))
