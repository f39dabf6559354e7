"""MovieLens-1M (``::``-separated .dat files) and MovieLens-100K (u.data, u.item, u.user)."""

from __future__ import annotations

from pathlib import Path

from e2urec.data.errors import DataFormatError
from e2urec.data.schema import Dataset, Interaction, Item, User
from e2urec.data.textfile import numbered_lines, parse_int, parse_rating, split_fields

# From the ML-1M README: users.dat stores codes, the prompt wants words.
ML1M_AGES = {
    1: "under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}
ML1M_OCCUPATIONS = [
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
]
ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
GENDERS = {"F": "female", "M": "male"}


def _gender(path: Path, line_no: int, code: str) -> str:
    code = code.strip().upper()
    if code not in GENDERS:
        raise DataFormatError(path, line_no, f"gender {code!r} is not F or M")
    return GENDERS[code]


def _ratings(
    path: Path,
    sep: str,
    users: dict[int, User],
    items: dict[int, Item],
    item_file: str,
    encoding: str = "ascii",
) -> list[Interaction]:
    interactions: list[Interaction] = []
    names = ("user", "item", "rating", "timestamp")
    for line_no, line in numbered_lines(path, encoding):
        user_s, item_s, rating_s, ts_s = split_fields(path, line_no, line, sep, names)
        user_id = parse_int(path, line_no, user_s, "user id")
        item_id = parse_int(path, line_no, item_s, "item id")
        if item_id not in items:
            raise DataFormatError(path, line_no, f"item id {item_id} is not in {item_file}")
        if user_id not in users:
            raise DataFormatError(path, line_no, f"user id {user_id} is not in the users file")
        interactions.append(
            Interaction(
                user_id,
                item_id,
                parse_rating(path, line_no, rating_s),
                parse_int(path, line_no, ts_s, "timestamp"),
            )
        )
    if not interactions:
        raise DataFormatError(path, None, "holds no ratings")
    return interactions


def load_ml1m(folder: Path | str, ratings_file: str = "ratings.dat") -> Dataset:
    """Load a MovieLens-1M folder; ``ratings_file`` names a ratings file of another name."""
    folder = Path(folder)
    items: dict[int, Item] = {}
    movies = folder / "movies.dat"
    for line_no, line in numbered_lines(movies, "latin-1"):
        id_s, title, genres = split_fields(
            movies, line_no, line, "::", ("movie", "title", "genres")
        )
        item_id = parse_int(movies, line_no, id_s, "movie id")
        items[item_id] = Item(item_id, title.strip(), tuple(g for g in genres.split("|") if g))
    users: dict[int, User] = {}
    users_path = folder / "users.dat"
    names = ("user", "gender", "age", "occupation", "zip")
    for line_no, line in numbered_lines(users_path, "ascii"):
        id_s, gender, age_s, occ_s, _zip = split_fields(users_path, line_no, line, "::", names)
        user_id = parse_int(users_path, line_no, id_s, "user id")
        age = parse_int(users_path, line_no, age_s, "age code")
        occ = parse_int(users_path, line_no, occ_s, "occupation code")
        if age not in ML1M_AGES:
            raise DataFormatError(
                users_path, line_no, f"age code {age} is not one of {sorted(ML1M_AGES)}"
            )
        if not 0 <= occ < len(ML1M_OCCUPATIONS):
            raise DataFormatError(users_path, line_no, f"occupation code {occ} is not in 0..20")
        users[user_id] = User(
            user_id, _gender(users_path, line_no, gender), ML1M_AGES[age], ML1M_OCCUPATIONS[occ]
        )
    interactions = _ratings(folder / ratings_file, "::", users, items, "movies.dat")
    return Dataset("ml-1m", "movie", users, items, interactions)


def load_ml100k(folder: Path | str) -> Dataset:
    """Load a MovieLens-100K folder (u.data tab-separated; u.item and u.user '|'-separated)."""
    folder = Path(folder)
    genres = ML100K_GENRES
    genre_path = folder / "u.genre"
    if genre_path.is_file():
        rows = [
            split_fields(genre_path, n, line, "|", ("genre", "index"))
            for n, line in numbered_lines(genre_path, "latin-1")
        ]
        genres = [name for name, _ in sorted(rows, key=lambda r: int(r[1]))]
    items: dict[int, Item] = {}
    item_path = folder / "u.item"
    names = ("movie", "title", "release", "video", "url", *genres)
    for line_no, line in numbered_lines(item_path, "latin-1"):
        fields = split_fields(item_path, line_no, line, "|", names)
        item_id = parse_int(item_path, line_no, fields[0], "movie id")
        flags = fields[5:]
        item_genres = tuple(g for g, f in zip(genres, flags, strict=True) if f.strip() == "1")
        items[item_id] = Item(item_id, fields[1].strip(), item_genres)
    users: dict[int, User] = {}
    user_path = folder / "u.user"
    for line_no, line in numbered_lines(user_path, "latin-1"):
        id_s, age_s, gender, occupation, _zip = split_fields(
            user_path, line_no, line, "|", ("user", "age", "gender", "occupation", "zip")
        )
        user_id = parse_int(user_path, line_no, id_s, "user id")
        age = parse_int(user_path, line_no, age_s, "age")
        users[user_id] = User(
            user_id, _gender(user_path, line_no, gender), str(age), occupation.strip()
        )
    interactions = _ratings(folder / "u.data", "\t", users, items, "u.item")
    return Dataset("ml-100k", "movie", users, items, interactions)
