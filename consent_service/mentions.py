"""@-mentions in prompts, resolved to handles after Unicode confusables are folded.

A mention must not slip past the gate by spelling a handle with look-alike
letters (Cyrillic 'а' for Latin 'a', full-width forms, ligatures). NFKC folds
compatibility forms; the table below folds the common cross-script homoglyphs
of Latin letters and digits. Whatever is still not a handle character after
folding makes the mention unresolvable, and the request is refused.
"""

from __future__ import annotations

import re
import unicodedata

# Cyrillic, Greek and other look-alikes of ASCII handle characters (after casefold).
_CONFUSABLES = str.maketrans(
    {
        "а": "a",
        "в": "b",
        "с": "c",
        "ԁ": "d",
        "е": "e",
        "һ": "h",
        "і": "i",
        "ј": "j",
        "к": "k",
        "ӏ": "l",
        "м": "m",
        "п": "n",
        "о": "o",
        "р": "p",
        "ԛ": "q",
        "г": "r",
        "ѕ": "s",
        "т": "t",
        "ц": "u",
        "ѵ": "v",
        "ԝ": "w",
        "х": "x",
        "у": "y",
        "ʐ": "z",
        "ё": "e",
        "ї": "i",
        "α": "a",
        "β": "b",
        "ϲ": "c",
        "ε": "e",
        "η": "n",
        "ι": "i",
        "κ": "k",
        "ν": "v",
        "ο": "o",
        "ρ": "p",
        "τ": "t",
        "υ": "u",
        "χ": "x",
        "γ": "y",
        "ζ": "z",
        "ω": "w",
        "ı": "i",
        "ȷ": "j",
        "ɡ": "g",
        "ɑ": "a",
        "ɩ": "i",
        "ʟ": "l",
        "ʀ": "r",
        "ℓ": "l",
        "℮": "e",
        "ⅼ": "l",
        "ⅰ": "i",
        "ⅴ": "v",
        "ⅹ": "x",
    }
)
_MENTION = re.compile(r"@([^\s@,;:!?()\[\]{}<>\"'`]+)")
_HANDLE_CHARS = re.compile(r"^[a-z0-9_.]+$")
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"}


def fold(text: str) -> str:
    """NFKC, case-fold, drop invisible characters and combining marks, map homoglyphs to ASCII."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if ch not in _INVISIBLE)
    text = "".join(ch for ch in unicodedata.normalize("NFD", text) if not unicodedata.combining(ch))
    return text.translate(_CONFUSABLES)


def extract_mentions(prompt: str) -> tuple[list[str], list[str]]:
    """(handles, unresolvable): folded handles in order of first mention, and mentions that stay ambiguous."""
    handles: list[str] = []
    bad: list[str] = []
    for raw in _MENTION.findall(unicodedata.normalize("NFKC", prompt)):
        folded = fold(raw).rstrip(".")
        if _HANDLE_CHARS.fullmatch(folded):
            if folded not in handles:
                handles.append(folded)
        else:
            bad.append(raw)
    return handles, bad
