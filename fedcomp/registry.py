"""A name → factory registry, one per family (datasets, models, compressors).

Adding a member is one decorated definition in its own module plus the
import line in the family's ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedcomp.suggest import did_you_mean

T = TypeVar("T")


def first_paragraph(doc: str) -> str:
    """A docstring's first paragraph on one line: the description ``fedcomp list`` shows, whole."""
    lines = []
    for line in doc.strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


class UnknownNameError(KeyError):
    """A name that is not in a registry; the message lists the choices."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to entries of one family, with a description each (given, or the docstring's first paragraph)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, T] = {}
        self._summaries: dict[str, str] = {}

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._entries[name] = entry
            self._summaries[name] = summary or first_paragraph(getattr(entry, "__doc__", None) or "")
            return entry

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.family} {name!r}{did_you_mean(name, self._entries)}; choose one of {sorted(self._entries)}"
            ) from None

    def summary(self, name: str) -> str:
        return self._summaries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
