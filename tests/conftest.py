"""Shared fixtures: tiny hand-written dataset folders and the shared data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filelock import FileLock

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml-1m"
    write(
        d / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
        "3::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi\n",
        "latin-1",
    )
    write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n", "ascii")
    write(
        d / "ratings.dat",
        "1::1::5::978300760\n1::2::3::978302109\n1::3::4::978301968\n"
        "2::3::2::978300000\n2::1::4::978300100\n",
        "ascii",
    )
    return d


@pytest.fixture
def ml100k_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    flags = "|".join(["0"] * 19)
    drama = "|".join("1" if i == 8 else "0" for i in range(19))
    write(
        d / "u.item",
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags}\n"
        f"2|Café au lait (1993)|01-Jan-1993||http://y|{drama}\n",
        "latin-1",
    )
    write(d / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    write(d / "u.data", "1\t1\t5\t881250949\n1\t2\t2\t881250950\n2\t2\t4\t881250951\n")
    return d


@pytest.fixture
def goodbooks_dir(tmp_path: Path) -> Path:
    d = tmp_path / "goodbooks"
    write(
        d / "books.csv",
        "book_id,title,authors,original_publication_year\n"
        '1,"The Hunger Games (The Hunger Games, #1)",Suzanne Collins,2008.0\n'
        "2,Harry Potter and the Sorcerer's Stone,J.K. Rowling,1997.0\n",
    )
    write(d / "ratings.csv", "user_id,book_id,rating\n7,1,5\n7,2,3\n8,2,4\n")
    return d


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (users download them)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def service_base(tmp_path_factory):
    """A tiny base trained on a small synthetic catalogue, shared by the worker tests.

    Under pytest-xdist the worker test files land on both processes, so the base is trained
    once for the run into the folder the processes share, behind a file lock, instead of once
    in each process. The tests only read it (consolidation gets its own copy)."""
    from tests.worker_world import train_small_base

    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: nothing to share
        return train_small_base(tmp_path_factory.mktemp("trained"))
    shared = tmp_path_factory.getbasetemp().parent  # one per run, above every process's own
    with FileLock(str(shared / "service_base.lock")):
        return train_small_base(shared / "service-base")
