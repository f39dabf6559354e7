"""The paper's "simple" prompt, split into a user-specific prefix and a target-item suffix.

Everything that depends only on the user (profile, history) comes first, so that a server can
encode the prefix once and reuse its KV cache across candidate items; the target item sits in the
suffix. Scoring always tokenises the two parts separately and concatenates the ids, so a cached
prefix gives exactly the same tokens as a full prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from e2urec.data.schema import Domain, Item, User

# Wording per domain: (noun, plural, past verb, perfect participle)
_WORDS: dict[str, tuple[str, str, str, str]] = {
    "movie": ("movie", "movies", "watched", "watched"),
    "book": ("book", "books", "read", "read"),
}
_PRONOUNS = {"female": ("she", "her"), "male": ("he", "his")}


@dataclass(frozen=True, slots=True)
class Prompt:
    prefix: str  # user-specific: profile and history
    suffix: str  # the target item and the closing instruction

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


def _profile_sentence(user: User, possessive: str) -> str:
    parts = []
    if user.gender:
        parts.append(f"The user is a {user.gender}.")
    if user.occupation:
        parts.append(f"{possessive.capitalize()} job is {user.occupation}.")
    if user.age:
        parts.append(f"{possessive.capitalize()} age is {user.age}.")
    return " ".join(parts)


def _stars(rating: float) -> str:
    value = f"{rating:g}"
    return f"{value} star" if value == "1" else f"{value} stars"


def user_prefix(user: User, history: list[tuple[Item, float]], domain: Domain) -> str:
    noun, plural, verb, participle = _WORDS[domain]
    subject, possessive = _PRONOUNS.get(user.gender or "", ("the user", "the user's"))
    profile = _profile_sentence(user, possessive)
    rendered = repr([f"{i}. {item.title} ({_stars(r)})" for i, (item, r) in enumerate(history, 1)])
    head = f"{profile} " if profile else ""
    return (
        f"{head}The user {verb} the following {plural} in order in the past, and rated them: "
        f"{rendered}. Note that more stars the user rated the {noun}, the more the user liked "
        f"the {noun}. Based on the {plural} {subject} has {participle}, deduce if {subject} will "
        f"like the {noun}"
    )


def target_suffix(item: Item) -> str:
    return f" ***{item.title}***. You should ONLY tell me yes or no."


def build_prompt(
    user: User, history: list[tuple[Item, float]], target: Item, domain: Domain
) -> Prompt:
    return Prompt(user_prefix(user, history, domain), target_suffix(target))
