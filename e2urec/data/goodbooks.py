"""goodbooks-10k / GoodReads CSVs: ``books.csv`` (book_id, title, ...) and ``ratings.csv``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from e2urec.data.errors import DataFormatError
from e2urec.data.schema import Dataset, Interaction, Item, User
from e2urec.data.textfile import decode_file, parse_int, parse_rating


def _rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    reader = csv.reader(io.StringIO(decode_file(path, "utf-8"), newline=""))
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in required if c not in header]
    if missing:
        fix = None
        if len(header) == 1 and any(s in header[0] for s in (";", "\t", "|")):
            fix = "the header is not comma-separated: is the separator right?"
        raise DataFormatError(
            path,
            1,
            f"missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'}",
            fix,
        )
    rows = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataFormatError(
                path,
                reader.line_num,
                f"expected {len(header)} comma-separated fields, found {len(row)}",
            )
        rows.append((reader.line_num, row))
    return header, rows


def load_goodbooks(folder: Path | str, ratings_file: str = "ratings.csv") -> Dataset:
    """Load goodbooks-10k style CSVs.

    ``ratings.csv`` may carry a ``timestamp`` column; goodbooks-10k has none, and then the file
    order stands in for time (its rows are grouped by user in rating order), which the README notes.
    """
    folder = Path(folder)
    books_path = folder / "books.csv"
    header, rows = _rows(books_path, ("book_id", "title"))
    col = {name: i for i, name in enumerate(header)}
    items: dict[int, Item] = {}
    for line_no, row in rows:
        book_id = parse_int(books_path, line_no, row[col["book_id"]], "book_id")
        meta = {k: row[col[k]] for k in ("authors", "original_publication_year") if k in col}
        items[book_id] = Item(book_id, row[col["title"]].strip(), (), meta)
    ratings_path = folder / ratings_file
    header, rows = _rows(ratings_path, ("user_id", "book_id", "rating"))
    col = {name: i for i, name in enumerate(header)}
    has_time = "timestamp" in col
    users: dict[int, User] = {}
    interactions: list[Interaction] = []
    for order, (line_no, row) in enumerate(rows):
        user_id = parse_int(ratings_path, line_no, row[col["user_id"]], "user_id")
        book_id = parse_int(ratings_path, line_no, row[col["book_id"]], "book_id")
        if book_id not in items:
            raise DataFormatError(ratings_path, line_no, f"book_id {book_id} is not in books.csv")
        ts = (
            parse_int(ratings_path, line_no, row[col["timestamp"]], "timestamp")
            if has_time
            else order
        )
        users.setdefault(user_id, User(user_id))
        interactions.append(
            Interaction(
                user_id, book_id, parse_rating(ratings_path, line_no, row[col["rating"]]), ts
            )
        )
    if not interactions:
        raise DataFormatError(ratings_path, None, "holds no ratings")
    return Dataset("goodbooks", "book", users, items, interactions)
