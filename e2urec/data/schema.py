"""The one in-memory schema every loader produces.

Ids are the dataset's own integer ids, kept as they are so that a user id in the service, in a
forget request and in the raw files all mean the same person.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Domain = Literal["movie", "book"]


@dataclass(frozen=True, slots=True)
class User:
    user_id: int
    # Free-form profile fields; the prompt uses gender, age and occupation when present.
    gender: str | None = None
    age: str | None = None
    occupation: str | None = None


@dataclass(frozen=True, slots=True)
class Item:
    item_id: int
    title: str
    genres: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class Interaction:
    user_id: int
    item_id: int
    rating: float
    timestamp: int


@dataclass(slots=True)
class Dataset:
    """Users, items and their interactions, plus the domain that words the prompt."""

    name: str
    domain: Domain
    users: dict[int, User]
    items: dict[int, Item]
    interactions: list[Interaction]

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.users):,} users, {len(self.items):,} {self.domain}s, "
            f"{len(self.interactions):,} interactions"
        )
