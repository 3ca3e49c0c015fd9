"""Text normalisation shared by crisis detection and choice matching.

Residents type on phones: half-width kana, full-width digits, katakana for emphasis, stray
spaces and punctuation, stretched characters. Matching happens on one canonical form.
"""

from __future__ import annotations

import re
import unicodedata

_KATAKANA = {chr(k): chr(k - 0x60) for k in range(0x30A1, 0x30F7)}
_DROP = re.compile(r"[\s\W_]+", re.UNICODE)
_REPEAT = re.compile(r"(.)\1{2,}")


def normalize(text: str) -> str:
    """NFKC, lower-case, katakana→hiragana, drop spaces/punctuation, squeeze 3+ repeats."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(_KATAKANA.get(ch, ch) for ch in text)
    text = _DROP.sub("", text)
    return _REPEAT.sub(r"\1", text)
