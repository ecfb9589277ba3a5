"""``did you mean …?`` for a mistyped name or key (a leaf module: it imports nothing of fedcomp)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'surp'?)"`` when a choice is close to ``word``, else ``""``: appended to an error."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close and "." in word:  # a dotted key: match its last part among the choices' last parts
        tail = word.rsplit(".", 1)[-1]
        by_tail = {c.rsplit(".", 1)[-1]: c for c in choices}
        close = [by_tail[m] for m in difflib.get_close_matches(tail, list(by_tail), n=1, cutoff=0.6)]
    return f" (did you mean {close[0]!r}?)" if close else ""
