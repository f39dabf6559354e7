from __future__ import annotations

from pathlib import Path

import pytest

from e2urec.data import (
    DataFormatError,
    SyntheticConfig,
    detect_format,
    generate_synthetic,
    load_dataset,
    load_goodbooks,
    load_ml1m,
    load_ml100k,
)
from tests.conftest import write


def test_ml1m_reads_latin1_titles_profiles_and_ratings(ml1m_dir: Path):
    ds = load_ml1m(ml1m_dir)
    assert ds.domain == "movie" and len(ds.interactions) == 5
    assert ds.items[3].title == "Cité des enfants perdus, La (1995)"
    assert ds.items[1].genres == ("Animation", "Children's", "Comedy")
    assert (ds.users[1].gender, ds.users[1].age, ds.users[1].occupation) == (
        "female",
        "under 18",
        "K-12 student",
    )
    assert ds.users[2].age == "56+" and ds.users[2].occupation == "self-employed"
    first = ds.interactions[0]
    assert (first.user_id, first.item_id, first.rating, first.timestamp) == (1, 1, 5.0, 978300760)


def test_ml1m_accepts_a_ratings_file_of_another_name(ml1m_dir: Path):
    (ml1m_dir / "ratings.dat").rename(ml1m_dir / "ratings.partial.dat")
    with pytest.raises(DataFormatError, match="ratings.dat: file not found"):
        load_ml1m(ml1m_dir)
    assert len(load_ml1m(ml1m_dir, ratings_file="ratings.partial.dat").interactions) == 5


def test_movies_dat_reencoded_as_utf8_still_reads(ml1m_dir: Path):
    text = (ml1m_dir / "movies.dat").read_bytes().decode("latin-1")
    write(ml1m_dir / "movies.dat", text, "utf-8")
    assert load_ml1m(ml1m_dir).items[3].title == "Cité des enfants perdus, La (1995)"


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        (
            "ratings.dat",
            "1::1::5::978300760\n1,2,3,978302109\n",
            r"ratings.dat:2: expected 4 fields separated by '::'.*seems to use ','",
        ),
        ("ratings.dat", "1::1::5\n", r"ratings.dat:1: expected 4 fields.*found 3"),
        (
            "ratings.dat",
            "1::1::5::978300760\n\n1::99::4::978300761\n",
            r"ratings.dat:3: item id 99 is not in movies.dat",
        ),
        (
            "ratings.dat",
            "1::1::5::978300760\n5::1::4::978300761\n",
            r"ratings.dat:2: user id 5 is not in the users file",
        ),
        ("ratings.dat", "1::1::9::978300760\n", r"ratings.dat:1: rating 9 is outside 1..5"),
        ("ratings.dat", "1::1::five::978300760\n", r"ratings.dat:1: rating 'five' is not a number"),
        (
            "users.dat",
            "1::F::1::10::48067\n2::X::56::16::70072\n",
            r"users.dat:2: gender 'X' is not F or M",
        ),
        ("users.dat", "1::F::1::10::48067\n2::M::57::16::70072\n", r"users.dat:2: age code 57"),
        ("movies.dat", "1::Toy Story (1995)\n", r"movies.dat:1: expected 3 fields"),
        (
            "movies.dat",
            "x::Toy Story (1995)::Comedy\n",
            r"movies.dat:1: movie id 'x' is not an integer",
        ),
    ],
)
def test_ml1m_malformed_files_name_file_and_line(
    ml1m_dir: Path, file: str, content: str, message: str
):
    write(ml1m_dir / file, content, "latin-1")
    with pytest.raises(DataFormatError, match=message):
        load_ml1m(ml1m_dir)


def test_wrong_encoding_is_reported_with_its_line(ml1m_dir: Path):
    # users.dat must be ASCII; a Latin-1 byte on line 2 is reported there.
    write(ml1m_dir / "users.dat", "1::F::1::10::48067\n2::M::56::16::7é072\n", "latin-1")
    with pytest.raises(DataFormatError, match=r"users.dat:2: byte 0xe9 is not valid ascii"):
        load_ml1m(ml1m_dir)
    # A UTF-16 file is caught before its NUL bytes turn into nonsense fields.
    write(ml1m_dir / "movies.dat", "1::Toy Story (1995)::Comedy\n", "utf-16")
    with pytest.raises(DataFormatError, match=r"movies.dat:1: contains NUL bytes.*UTF-16"):
        load_ml1m(ml1m_dir)


def test_ml100k_reads_genre_flags_and_tab_ratings(ml100k_dir: Path):
    ds = load_ml100k(ml100k_dir)
    assert ds.items[2].title == "Café au lait (1993)" and ds.items[2].genres == ("Drama",)
    assert ds.users[2].gender == "female" and ds.users[2].occupation == "other"
    assert [(x.user_id, x.item_id, x.rating) for x in ds.interactions] == [
        (1, 1, 5),
        (1, 2, 2),
        (2, 2, 4),
    ]


def test_ml100k_comma_separated_ratings_are_rejected(ml100k_dir: Path):
    write(ml100k_dir / "u.data", "1,1,5,881250949\n")
    with pytest.raises(
        DataFormatError, match=r"u.data:1: expected 4 fields separated by '\\t'.*seems to use ','"
    ):
        load_ml100k(ml100k_dir)


def test_goodbooks_reads_quoted_titles_and_uses_file_order_without_timestamps(goodbooks_dir: Path):
    ds = load_goodbooks(goodbooks_dir)
    assert ds.domain == "book"
    assert ds.items[1].title == "The Hunger Games (The Hunger Games, #1)"
    assert ds.items[2].metadata["authors"] == "J.K. Rowling"
    assert [x.timestamp for x in ds.interactions] == [0, 1, 2]
    assert set(ds.users) == {7, 8}


def test_goodbooks_timestamp_column_is_used(goodbooks_dir: Path):
    write(goodbooks_dir / "ratings.csv", "user_id,book_id,rating,timestamp\n7,1,5,300\n7,2,3,100\n")
    assert [x.timestamp for x in load_goodbooks(goodbooks_dir).interactions] == [300, 100]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "user_id,book_id\n7,1\n",
            r"ratings.csv:1: missing column\(s\) rating; found user_id, book_id",
        ),
        ("user_id;book_id;rating\n7;1;5\n", r"ratings.csv:1: missing column.*not comma-separated"),
        ("user_id,book_id,rating\n7,1,5\n7,3,4\n", r"ratings.csv:3: book_id 3 is not in books.csv"),
        (
            "user_id,book_id,rating\n7,1,5,9\n",
            r"ratings.csv:2: expected 3 comma-separated fields, found 4",
        ),
    ],
)
def test_goodbooks_malformed(goodbooks_dir: Path, content: str, message: str):
    write(goodbooks_dir / "ratings.csv", content)
    with pytest.raises(DataFormatError, match=message):
        load_goodbooks(goodbooks_dir)


def test_goodbooks_rejects_non_utf8(goodbooks_dir: Path):
    write(goodbooks_dir / "books.csv", "book_id,title\n1,Les Misérables\n", "latin-1")
    with pytest.raises(DataFormatError, match=r"books.csv:2: byte 0xe9 is not valid utf-8"):
        load_goodbooks(goodbooks_dir)


def test_format_detection_and_errors(
    ml1m_dir: Path, ml100k_dir: Path, goodbooks_dir: Path, tmp_path: Path
):
    assert detect_format(ml1m_dir) == "ml-1m"
    assert detect_format(ml100k_dir) == "ml-100k"
    assert detect_format(goodbooks_dir) == "goodbooks"
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_dataset("auto", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("ml-1m", tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown format"):
        load_dataset("csv", ml1m_dir)


def test_synthetic_is_seeded_and_ratings_follow_taste():
    a, b = generate_synthetic(SyntheticConfig(seed=3)), generate_synthetic(SyntheticConfig(seed=3))
    assert a.interactions == b.interactions and a.items == b.items
    assert generate_synthetic(SyntheticConfig(seed=4)).interactions != a.interactions
    titles = [i.title for i in a.items.values()]
    assert len(set(titles)) == len(titles)
    # Ratings follow genre taste: a user's ratings in their most-rated genre beat their others.
    by_user: dict[int, list] = {}
    for x in a.interactions:
        by_user.setdefault(x.user_id, []).append(x)
    wins = 0
    for xs in by_user.values():
        counts: dict[str, list[float]] = {}
        for x in xs:
            counts.setdefault(a.items[x.item_id].genres[0], []).append(x.rating)
        top = max(counts, key=lambda g: len(counts[g]))
        rest = [r for g, rs in counts.items() if g != top for r in rs]
        wins += sum(counts[top]) / len(counts[top]) > (sum(rest) / len(rest) if rest else 0)
    assert wins / len(by_user) > 0.7


@pytest.mark.shared_data
def test_shared_ml1m_partial_ratings(shared_data: Path):
    ds = load_dataset(
        "auto", shared_data / "ml-1m", ratings_file="ratings.users_1-2999.partial.dat"
    )
    assert ds.name == "ml-1m" and len(ds.interactions) == 487_650
    assert len(ds.items) == 3883 and len(ds.users) == 6040


@pytest.mark.shared_data
def test_shared_ml100k(shared_data: Path):
    ds = load_dataset("auto", shared_data / "ml-100k")
    assert (len(ds.users), len(ds.items), len(ds.interactions)) == (943, 1682, 100_000)


@pytest.mark.shared_data
def test_shared_goodbooks_books_with_the_sample_ratings(shared_data: Path):
    # goodbooks-10k ships a 99-row sample of ratings.csv; the full file is 69 MB.
    ds = load_dataset("auto", shared_data / "goodbooks-10k", ratings_file="samples/ratings.csv")
    assert ds.domain == "book" and len(ds.items) == 10_000 and len(ds.interactions) == 99
    assert ds.items[1].title == "The Hunger Games (The Hunger Games, #1)"


def test_a_prepared_folders_source_loads_the_same_dataset_again(ml1m_dir: Path):
    from e2urec.data import SyntheticConfig, generate_synthetic, load_source

    synthetic = {"format": "auto", "path": None, "ratings_file": None, "dataset": "synthetic-7"}
    again = load_source({**synthetic, "synthetic": {"users": 20, "items": 30, "seed": 7}})
    assert again.interactions == generate_synthetic(SyntheticConfig(20, 30, seed=7)).interactions
    folder = {"format": "ml-1m", "path": str(ml1m_dir), "ratings_file": None, "dataset": "ml-1m"}
    assert load_source(folder).interactions == load_dataset("ml-1m", ml1m_dir).interactions
    with pytest.raises(ValueError, match="names no dataset folder"):
        load_source({**folder, "path": None})
