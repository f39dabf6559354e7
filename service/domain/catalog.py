"""The catalogue as the core library sees it, read from the database."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from e2urec.data import Dataset, Interaction, Item, User
from service.core.db.models import Interaction as InteractionRow
from service.core.db.models import Item as ItemRow
from service.core.db.models import ServiceState
from service.core.db.models import User as UserRow


class NoCatalog(LookupError):
    pass


def catalog_info(session: Session) -> dict:
    state = session.get(ServiceState, "catalog")
    if state is None:
        raise NoCatalog("no catalogue imported yet: run `e2urec-service import`")
    return state.value


def load_items(session: Session) -> dict[int, Item]:
    rows = session.execute(select(ItemRow.id, ItemRow.title, ItemRow.genres)).all()
    return {i: Item(i, title, tuple(genres or ())) for i, title, genres in rows}


def item_external_ids(session: Session) -> dict[int, str]:
    return dict(session.execute(select(ItemRow.id, ItemRow.external_id)).all())


def as_user(row: UserRow) -> User:
    return User(row.id, row.gender, row.age, row.occupation)


def dataset_from_db(session: Session, *, include_quarantined: bool) -> Dataset:
    """Everything in the database as a core :class:`Dataset`. Serving never includes quarantined
    users; unlearning needs them (they are the forget set)."""
    info = catalog_info(session)
    users_q = select(UserRow)
    if not include_quarantined:
        users_q = users_q.where(UserRow.quarantined_at.is_(None))
    users = {u.id: as_user(u) for u in session.scalars(users_q)}
    rows = session.execute(
        select(
            InteractionRow.user_id, InteractionRow.item_id, InteractionRow.rating, InteractionRow.ts
        )
    ).all()
    interactions = [Interaction(u, i, r, t) for u, i, r, t in rows if u in users]
    return Dataset(info["name"], info["domain"], users, load_items(session), interactions)


@dataclass
class UserContext:
    """What a recommendation for one user may use."""

    user_id: int
    external_id: str
    profile: User
    quarantined: bool
    history: tuple[tuple[int, float], ...]  # last K rated items, oldest first
    recent: list[int]  # most recent items, newest first (seeds co-occurrence)
    seen: set[int]


def user_context(
    session: Session, external_id: str, *, history_len: int, recent: int
) -> UserContext | None:
    user = session.scalars(select(UserRow).where(UserRow.external_id == external_id)).first()
    if user is None:
        return None
    if user.quarantined_at is not None:
        # Quarantined: the history is not read at all, not merely left unused.
        return UserContext(user.id, external_id, as_user(user), True, (), [], set())
    rows = session.execute(
        select(InteractionRow.item_id, InteractionRow.rating)
        .where(InteractionRow.user_id == user.id)
        .order_by(InteractionRow.ts, InteractionRow.item_id)
    ).all()
    history = tuple((i, float(r)) for i, r in rows[-history_len:])
    newest = [i for i, _ in reversed(rows[-recent:])]
    return UserContext(
        user.id, external_id, as_user(user), False, history, newest, {i for i, _ in rows}
    )
