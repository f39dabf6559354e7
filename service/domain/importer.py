"""Load a dataset (any of the core loaders) into the database, in one transaction."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from e2urec.data import Dataset
from service.core.db.models import Interaction, Item, ServiceState, User, utcnow

CHUNK = 20_000


class CatalogExists(ValueError):
    pass


@dataclass
class ImportReport:
    users: int
    items: int
    interactions: int


def _chunks(rows: list[dict], size: int = CHUNK) -> Iterable[list[dict]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _copy_interactions(session: Session, rows: list[dict], tick: Callable[[int], None]) -> None:
    """PostgreSQL's COPY: an order of magnitude faster than INSERT for a million ratings."""
    cursor = session.connection().connection.driver_connection.cursor()
    with cursor.copy("COPY interactions (user_id, item_id, rating, ts) FROM STDIN") as copy:
        for chunk in _chunks(rows):
            buf = io.StringIO()
            for r in chunk:
                buf.write(f"{r['user_id']}\t{r['item_id']}\t{r['rating']}\t{r['ts']}\n")
            copy.write(buf.getvalue())
            tick(len(chunk))


def import_dataset(
    session: Session,
    dataset: Dataset,
    source: dict,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> ImportReport:
    """Insert the dataset's users, items and interactions. Refuses a database that already has
    a catalogue (an import merges nothing), and writes everything or nothing: the caller's
    transaction commits it."""
    users_now = session.scalar(select(func.count()).select_from(User)) or 0
    items_now = session.scalar(select(func.count()).select_from(Item)) or 0
    if users_now or items_now:
        raise CatalogExists(
            f"the database already holds a catalogue ({users_now:,} users, {items_now:,} items); "
            "import into a fresh database (set E2UREC_DATABASE_URL, or remove the embedded "
            "var/ folder)"
        )
    report = progress or (lambda *_: None)
    user_rows = [
        {
            "id": u.user_id,
            "external_id": str(u.user_id),
            "gender": u.gender,
            "age": u.age,
            "occupation": u.occupation,
            "created_at": utcnow(),
        }
        for u in dataset.users.values()
    ]
    item_rows = [
        {
            "id": i.item_id,
            "external_id": str(i.item_id),
            "title": i.title,
            "genres": list(i.genres),
            "metadata_": dict(i.metadata),
        }
        for i in dataset.items.values()
    ]
    interaction_rows = [
        {"user_id": x.user_id, "item_id": x.item_id, "rating": x.rating, "ts": x.timestamp}
        for x in dataset.interactions
    ]
    for name, model, rows in (("users", User, user_rows), ("items", Item, item_rows)):
        for chunk in _chunks(rows):
            session.execute(insert(model), chunk)
        report(name, len(rows), len(rows))
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        report("interactions", done, len(interaction_rows))

    if session.bind.dialect.name == "postgresql":
        session.flush()
        _copy_interactions(session, interaction_rows, tick)
    else:
        for chunk in _chunks(interaction_rows):
            session.execute(insert(Interaction), chunk)
            tick(len(chunk))
    session.merge(
        ServiceState(
            key="catalog",
            value={
                "name": dataset.name,
                "domain": dataset.domain,
                "users": len(user_rows),
                "items": len(item_rows),
                "interactions": len(interaction_rows),
                "source": source,
                "imported_at": utcnow().isoformat(),
            },
        )
    )
    return ImportReport(len(user_rows), len(item_rows), len(interaction_rows))
