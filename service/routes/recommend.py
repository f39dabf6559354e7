"""``GET /recommend``: candidate generation, then the LLM ranks the candidates."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool

from e2urec.data.prompts import target_suffix, user_prefix
from service.catalog import UserContext, user_context
from service.db.session import session_scope
from service.deps import RecommendCaller, SettingsDep
from service.schemas import (
    EXTERNAL_ID,
    ModelVersionOut,
    Problem,
    Recommendations,
    RecommendedItem,
)
from service.serving import Serving
from service.settings import Settings

router = APIRouter(tags=["recommend"])

SCORE_TIMEOUT_S = 30.0


def _context(serving: Serving, settings: Settings, external_id: str) -> UserContext | None:
    """Read the user and bring the candidate index up to date, in one read transaction."""
    with session_scope(settings.db_url, write=False) as session:
        serving.index.sync(session, serving.hash_user)
        return user_context(
            session,
            external_id,
            history_len=settings.history_len,
            recent=settings.recent_items,
        )


def _parse_candidates(serving: Serving, settings: Settings, raw: list[str]) -> list[int]:
    ids = [part.strip() for value in raw for part in value.split(",") if part.strip()]
    if not ids:
        raise HTTPException(422, "candidates= is empty: give item ids, comma-separated")
    if len(ids) > settings.max_candidates:
        raise HTTPException(
            422, f"too many candidates: {len(ids)} given, at most {settings.max_candidates}"
        )
    bad = [i for i in ids if not _valid_id(i)]
    if bad:
        raise HTTPException(422, f"malformed item id(s): {', '.join(map(repr, bad[:5]))}")
    unknown = [i for i in ids if i not in serving.item_internal]
    if unknown:
        raise HTTPException(404, f"unknown item id(s): {', '.join(map(repr, unknown[:5]))}")
    return list(dict.fromkeys(serving.item_internal[i] for i in ids))  # order kept, no repeats


def _valid_id(value: str) -> bool:
    import re

    return re.fullmatch(EXTERNAL_ID, value) is not None


def _item(serving: Serving, item_id: int, score: float, source: str) -> RecommendedItem:
    item = serving.items[item_id]
    return RecommendedItem(
        item_id=serving.item_external[item_id],
        title=item.title,
        genres=list(item.genres),
        score=score,
        source=source,
    )


@router.get(
    "/recommend",
    response_model=Recommendations,
    responses={
        404: {"model": Problem, "description": "Unknown user or item"},
        503: {"model": Problem, "description": "No catalogue or no model loaded yet"},
    },
    summary="Top-k recommendations for a user",
)
async def recommend(
    request: Request,
    settings: SettingsDep,
    caller: RecommendCaller,
    user_id: Annotated[str, Query(pattern=EXTERNAL_ID, description="The user's external id")],
    k: Annotated[int, Query(ge=1, description="How many items (at most E2UREC_MAX_K)")] = 10,
    candidates: Annotated[
        list[str] | None,
        Query(description="Rank these item ids instead of generated candidates (comma-separated)"),
    ] = None,
) -> Recommendations:
    """Two stages: cheap candidates (co-occurrence with the user's recent items and popularity,
    over users who have not asked to be forgotten, minus what the user has seen), then the LLM's
    P(like) for each candidate ranks them. A user who asked to be forgotten gets popular items,
    flagged ``personalized: false``: none of their data is read."""
    if k > settings.max_k:
        raise HTTPException(422, f"k={k} is too large: at most {settings.max_k}")
    serving: Serving = request.app.state.serving
    if serving.index is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, serving.catalog_error)
    explicit = _parse_candidates(serving, settings, candidates) if candidates else None
    ctx = await run_in_threadpool(_context, serving, settings, user_id)
    if ctx is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown user {user_id!r}")
    if ctx.quarantined:
        if explicit is not None:
            counts = serving.index.popularity(explicit)
            ranked = sorted(zip(explicit, counts, strict=True), key=lambda x: -x[1])[:k]
            items = [_item(serving, i, count, "popularity") for i, count in ranked]
        else:
            popular = serving.index.popular(k)
            items = [_item(serving, c.item_id, c.score, c.source) for c in popular]
        return Recommendations(
            user_id=user_id,
            personalized=False,
            model_version=None,
            items=items,
            note="this user asked to be forgotten: popular items, none of the user's data used",
        )
    engine = serving.engine
    if engine is None or not engine.running:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, serving.readiness()["model"])
    if explicit is not None:
        pool = [(i, "explicit") for i in explicit]
    else:
        found = serving.index.for_user(ctx.recent, ctx.seen, settings.candidate_pool)
        pool = [(c.item_id, c.source) for c in found]
    if not pool:
        return Recommendations(user_id=user_id, personalized=True, model_version=None, items=[])
    prefix = user_prefix(
        ctx.profile, [(serving.items[i], r) for i, r in ctx.history], serving.domain
    )
    suffixes = [target_suffix(serving.items[i]) for i, _ in pool]
    try:
        scored = await asyncio.wait_for(engine.score(prefix, suffixes), SCORE_TIMEOUT_S)
    except TimeoutError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the model is overloaded; retry shortly"
        ) from None
    ranked = sorted(zip(pool, scored.scores, strict=True), key=lambda x: -x[1])[:k]
    v = scored.version
    return Recommendations(
        user_id=user_id,
        personalized=True,
        model_version=ModelVersionOut(base=v.base, adapter=v.adapter, label=v.label),
        items=[_item(serving, i, score, source) for (i, source), score in ranked],
    )
