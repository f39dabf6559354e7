"""``GET /recommend``: candidate generation, then the LLM ranks the candidates."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool

from e2urec.data.prompts import target_suffix, user_prefix
from e2urec.recommend import blended_order
from service.api.deps import RecommendCaller, ServingDep, SettingsDep
from service.api.schemas import (
    EXTERNAL_ID,
    ModelVersionOut,
    Problem,
    Recommendations,
    RecommendedItem,
)
from service.core.db.session import session_scope
from service.core.settings import Settings
from service.domain.catalog import UserContext, user_context
from service.domain.registry import active_ids
from service.serving.process import Serving

router = APIRouter(tags=["recommend"])


def _context(
    serving: Serving, settings: Settings, external_id: str
) -> tuple[UserContext | None, tuple[int | None, int | None]]:
    """Read the user, the registry's active version and bring the candidate index up to date,
    in one read transaction: a request that sees a completed deletion also sees the version
    that forgot it, and is never scored by an older one."""
    with session_scope(settings.db_url, write=False) as session:
        serving.index.sync(session, serving.hash_user)
        ctx = user_context(
            session,
            external_id,
            history_len=settings.history_len,
            recent=settings.recent_items,
        )
        return ctx, active_ids(session)


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


def _item(
    serving: Serving, item_id: int, score: float, source: str, stage: float | None = None
) -> RecommendedItem:
    item = serving.items[item_id]
    return RecommendedItem(
        item_id=serving.item_external[item_id],
        title=item.title,
        genres=list(item.genres),
        score=score,
        source=source,
        stage_score=stage,
    )


class _ClientGone(Exception):
    pass


async def _score_unless_abandoned(request: Request, scoring, timeout: float):
    """Await the engine, but give up (cancelling the queued work, which the engine then skips)
    when the client disconnects or the timeout passes: an abandoned request must not keep the
    model busy while others wait."""
    task = asyncio.ensure_future(scoring)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait({task}, timeout=min(0.05, remaining))
            if done:
                return task.result()
            if await request.is_disconnected():
                raise _ClientGone
    finally:
        if not task.done():
            task.cancel()


def _unpersonalised(
    serving: Serving, user_id: str, explicit: list[int] | None, k: int, note: str
) -> Recommendations:
    """Popular items (or the given candidates by popularity): no model, no user data."""
    if explicit is not None:
        counts = serving.index.popularity(explicit)
        ranked = sorted(zip(explicit, counts, strict=True), key=lambda x: -x[1])[:k]
        items = [_item(serving, i, count, "popularity") for i, count in ranked]
    else:
        items = [_item(serving, c.item_id, c.score, c.source) for c in serving.index.popular(k)]
    return Recommendations(
        user_id=user_id, personalized=False, model_version=None, items=items, note=note
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
    serving: ServingDep,
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
    if serving.index is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, serving.catalog_error)
    explicit = _parse_candidates(serving, settings, candidates) if candidates else None
    ctx, (base, adapter) = await run_in_threadpool(_context, serving, settings, user_id)
    if ctx is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown user {user_id!r}")
    if ctx.quarantined:
        serving.metrics.unpersonalised.labels("forgotten_user").inc()
        return _unpersonalised(
            serving,
            user_id,
            explicit,
            k,
            "this user asked to be forgotten: popular items, none of the user's data used",
        )
    if base is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, serving.readiness()["model"])
    engine = serving.engine
    serving.models.supervise()  # a dead inference loop is restarted here too
    behind = serving.models.behind(base, adapter)
    if behind is not None:
        # Fail closed: never score with a version older than the registry's active one (it may
        # still hold users whose deletion completed). Popular items, flagged, until it loads.
        serving.metrics.unpersonalised.labels("model_behind").inc()
        return _unpersonalised(
            serving,
            user_id,
            explicit,
            k,
            f"not personalised: {behind}; popular items meanwhile",
        )
    found = None  # the stage's candidates, when it chose them
    if explicit is not None:
        pool = [(i, "explicit", None) for i in explicit]
    else:
        found = serving.index.for_user(ctx.recent, ctx.seen, settings.candidate_pool)
        pool = [(c.item_id, c.source, c.score) for c in found]
    if not pool:
        return Recommendations(user_id=user_id, personalized=True, model_version=None, items=[])
    prefix = user_prefix(
        ctx.profile, [(serving.items[i], r) for i, r in ctx.history], serving.domain
    )
    suffixes = [target_suffix(serving.items[i]) for i, _, _ in pool]
    try:
        scored = await _score_unless_abandoned(
            request, engine.score(prefix, suffixes), settings.score_timeout_seconds
        )
    except TimeoutError:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the model is overloaded; retry shortly"
        ) from None
    except _ClientGone:
        # Nobody reads this answer; its rows were dropped from the engine's queue unscored.
        raise HTTPException(499, "client closed the request") from None
    if settings.rank_by == "blend" and found is not None:
        # P(rated) x P(like | rated)^w (see Settings.rank_by); popularity top-ups come last
        stage = [c.score for c in found]
        tiers = [c.tier for c in found]
        order = blended_order(stage, scored.scores, tiers, settings.like_weight)[:k]
    else:  # stable: ties keep the given order
        order = sorted(range(len(pool)), key=lambda j: -scored.scores[j])[:k]
    v = scored.version
    if (v.base, v.adapter) != (base, adapter):  # swapped between the check and the batch
        serving.metrics.unpersonalised.labels("model_behind").inc()
        return _unpersonalised(
            serving, user_id, explicit, k, "not personalised: the model changed while scoring"
        )
    return Recommendations(
        user_id=user_id,
        personalized=True,
        model_version=ModelVersionOut(base=v.base, adapter=v.adapter, label=v.label),
        items=[
            _item(serving, pool[j][0], scored.scores[j], pool[j][1], stage=pool[j][2])
            for j in order
        ],
    )
