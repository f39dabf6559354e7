"""A seeded synthetic catalogue: the embedded default and the test fixture.

Users hold a latent taste over genres; items belong to one or two genres and carry titles built
from genre-flavoured words (so a language model can read the genre off the title, as it would read
"Nightmare" or "Wedding" in a real title); ratings follow taste, item quality and user leniency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from e2urec.data.movielens import ML1M_AGES, ML1M_OCCUPATIONS
from e2urec.data.schema import Dataset, Interaction, Item, User

# genre -> (adjectives, nouns) that make its titles recognisable
GENRE_WORDS: dict[str, tuple[list[str], list[str]]] = {
    "Horror": (
        ["Haunted", "Bloody", "Cursed", "Silent", "Wicked"],
        ["Night", "Grave", "Asylum", "Scream", "Shadow"],
    ),
    "Comedy": (
        ["Crazy", "Lucky", "Silly", "Wild", "Awkward"],
        ["Wedding", "Vacation", "Roommates", "Party", "Neighbors"],
    ),
    "Romance": (
        ["Sweet", "Endless", "Secret", "Tender", "Summer"],
        ["Love", "Kiss", "Heart", "Promise", "Letters"],
    ),
    "Action": (
        ["Fast", "Deadly", "Iron", "Final", "Rogue"],
        ["Strike", "Mission", "Fury", "Target", "Pursuit"],
    ),
    "Sci-Fi": (
        ["Galactic", "Quantum", "Alien", "Cyber", "Orbital"],
        ["Planet", "Android", "Starship", "Signal", "Colony"],
    ),
    "Drama": (
        ["Quiet", "Broken", "Distant", "Honest", "Bitter"],
        ["Family", "Years", "Memory", "River", "Winter"],
    ),
    "Animation": (
        ["Magic", "Tiny", "Brave", "Happy", "Flying"],
        ["Dragon", "Kingdom", "Toys", "Bunny", "Forest"],
    ),
    "Thriller": (
        ["Hidden", "Dark", "Twisted", "Fatal", "Cold"],
        ["Conspiracy", "Witness", "Code", "Alibi", "Trap"],
    ),
    "Documentary": (
        ["True", "Untold", "Real", "Inside", "Great"],
        ["Story", "Journey", "Ocean", "History", "Life"],
    ),
    "Western": (
        ["Dusty", "Lone", "Outlaw", "Golden", "Red"],
        ["Canyon", "Saloon", "Rider", "Frontier", "Gun"],
    ),
}
GENRES = list(GENRE_WORDS)


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 300
    items: int = 400
    ratings_per_user: int = 40
    seed: int = 0


def generate_synthetic(config: SyntheticConfig | None = None) -> Dataset:
    """Generate a reproducible dataset: the same config always gives the same data."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    n_genres = len(GENRES)

    items: dict[int, Item] = {}
    item_genres = np.zeros((cfg.items, n_genres))
    seen_titles: set[str] = set()
    for i in range(cfg.items):
        main = int(rng.integers(n_genres))
        genres = [main]
        if rng.random() < 0.3:
            genres.append(int(rng.choice([g for g in range(n_genres) if g != main])))
        item_genres[i, genres] = 1.0 / len(genres)
        adjectives, nouns = GENRE_WORDS[GENRES[main]]
        title = f"{rng.choice(adjectives)} {rng.choice(nouns)}"
        if len(genres) > 1:  # a second genre shows in the title too, as in "Alien Wedding"
            title = f"{title} of the {rng.choice(GENRE_WORDS[GENRES[genres[1]]][1])}"
        year = int(rng.integers(1960, 2001))
        full = f"{title} ({year})"
        sequel = 2
        while full in seen_titles:
            full, sequel = f"{title} {sequel} ({year})", sequel + 1
        seen_titles.add(full)
        items[i + 1] = Item(i + 1, full, tuple(GENRES[g] for g in genres))
    quality = rng.normal(0.0, 0.5, cfg.items)
    popularity = rng.zipf(1.6, cfg.items).clip(max=50).astype(float)

    users: dict[int, User] = {}
    interactions: list[Interaction] = []
    ages, occupations = list(ML1M_AGES.values()), ML1M_OCCUPATIONS
    start = 946_684_800  # 2000-01-01; users join over a year and rate over a few weeks
    for u in range(cfg.users):
        user_id = u + 1
        users[user_id] = User(
            user_id,
            "female" if rng.random() < 0.5 else "male",
            str(rng.choice(ages)),
            str(rng.choice(occupations)),
        )
        taste = rng.dirichlet(np.full(n_genres, 0.3))
        affinity = item_genres @ taste  # how much this user likes each item's genres, in 0..1
        leniency = rng.normal(0.0, 0.8)  # real users differ a lot in how freely they give stars
        # Users mostly watch what they expect to like, but not only.
        weights = popularity * (0.15 + affinity)
        count = min(cfg.items, max(12, int(rng.poisson(cfg.ratings_per_user))))
        chosen = rng.choice(cfg.items, size=count, replace=False, p=weights / weights.sum())
        t = start + int(rng.integers(0, 365 * 86_400))
        for i in chosen:
            score = 3.1 + 4.0 * (affinity[i] - 0.1) + quality[i] + leniency + rng.normal(0, 0.5)
            rating = float(np.clip(np.rint(score), 1, 5))
            t += int(rng.integers(60, 3 * 86_400))
            interactions.append(Interaction(user_id, int(i) + 1, rating, t))
    return Dataset(f"synthetic-{cfg.seed}", "movie", users, items, interactions)
