"""Telling serving processes that the registry changed: the worker's side of hot swap.

Kept apart from ``service.serving.model_sync`` (the serving side, which loads models into the
engine) so that publishing a change never imports the engine, peft or the HTTP stack."""

from __future__ import annotations

import logging

from service.core.settings import Settings

log = logging.getLogger(__name__)


def publish_model_change(settings: Settings, version: str) -> bool:
    """Tell every serving process to look at the registry now (best effort: they poll too)."""
    if not settings.redis_url:
        return False
    import redis

    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        client.publish(settings.model_channel, version)
        client.close()
        return True
    except redis.RedisError as exc:
        log.warning("could not publish the model change (serving will poll): %s", exc)
        return False
