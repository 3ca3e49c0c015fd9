"""The terminal chat and the flow diagram, driven as a maintainer would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_chat_through_standard_input():
    answers = "\n".join(["1", "1", "2", "ひきこもり", "2", "1", "ほかにはない", "3", "1"])
    proc = subprocess.run([sys.executable, "-m", "bot", "chat"], cwd=REPO, input=answers,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "はじめる" in out and "  1. " in out
    from bot.pack import load_pack

    assert load_pack("kyoto").msg("feedback.ask", "ja").splitlines()[0] in out  # the results
    assert "075-" in out or "tel" in out or "0120" in out


def test_graph_writes_mermaid(tmp_path):
    out = tmp_path / "flow.mmd"
    proc = subprocess.run([sys.executable, "-m", "bot", "graph", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")
    assert text.startswith("flowchart TD")
    assert "concern -- " in text and "--> hiki_duration" in text
