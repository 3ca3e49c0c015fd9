"""Text normalisation shared by crisis detection and choice matching.

Residents type on phones: half-width kana, full-width digits, katakana for emphasis, stray
spaces and punctuation, stretched characters. Matching happens on one canonical form.
"""

from __future__ import annotations

import re
import unicodedata

_KATAKANA = {k: k - 0x60 for k in range(0x30A1, 0x30F7)}
_DROP = re.compile(r"[\s\W_]+", re.UNICODE)
_REPEAT = re.compile(r"(.)\1{2,}")
# Stretching marks (the long-vowel mark and the small vowels a i u e o), dropped so that a
# stretched word matches its plain form; applied to both sides of every match.
_STRETCH = str.maketrans("", "", "\u30fc\u3041\u3043\u3045\u3047\u3049")


def fold(text: str) -> str:
    """Katakana → hiragana, so the same word in either script matches."""
    return text.translate(_KATAKANA)


def canonical(text: str) -> str:
    """NFKC, lower case, hiragana, no stretching marks; spaces and punctuation kept."""
    return fold(unicodedata.normalize("NFKC", text).lower()).translate(_STRETCH)


def normalize(text: str) -> str:
    """NFKC, lower-case, katakana→hiragana, no long-vowel mark or small vowels, no spaces
    or punctuation, 3+ repeats squeezed."""
    return _REPEAT.sub(r"\1", _DROP.sub("", canonical(text)))


def normalize_words(text: str) -> str:
    """The same, but punctuation becomes one space, so Latin words keep their edges."""
    return _REPEAT.sub(r"\1", _DROP.sub(" ", canonical(text))).strip()
