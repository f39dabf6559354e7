"""The periodic tick: the database is the source of truth, the broker only a doorbell.

Each tick cuts a batch when one is due, (re-)sends a message for every job that should be
running but might not be (never sent, sent long ago, or its worker died and the lease ran out),
and purges superseded model files. A crash between a commit and a send, a lost message or a
restarted Redis costs at most one tick; duplicates are harmless because running needs a claim.
"""

from __future__ import annotations

import logging

from service.core.db.session import session_scope
from service.core.settings import Settings
from service.domain.jobs import (
    BatchPolicy,
    auto_retry_failed,
    cut_batch,
    deadline_fallback,
    jobs_needing_a_message,
    lock_queue,
    mark_enqueued,
)
from service.domain.tasks_client import send_run_job
from worker.purge import purge_superseded

log = logging.getLogger(__name__)


def reconcile(settings: Settings, *, send_all: bool = False, force_batch: bool = False) -> dict:
    with session_scope(settings.db_url) as session:
        retried, exhausted = auto_retry_failed(
            session,
            max_retries=settings.job_auto_retries,
            backoff_seconds=settings.job_retry_backoff_seconds,
        )
    for job_id in exhausted:  # the alert: requests stay open until the deadline fallback
        log.error("job %s failed after %d automatic retries", job_id, settings.job_auto_retries)
    with session_scope(settings.db_url) as session:
        deadline = deadline_fallback(
            session,
            deadline_seconds=settings.forget_deadline_seconds,
            margin_seconds=settings.forget_deadline_margin_seconds,
        )
    with session_scope(settings.db_url) as session:
        job = cut_batch(
            session, BatchPolicy.from_settings(settings), force=force_batch, actor="tick"
        )
        cut = job.id if job is not None else None
    with session_scope(settings.db_url) as session:
        # Marked as sent under the queue lock, before sending: two ticks at once cannot both
        # send; a send that fails is retried when the mark goes stale.
        lock_queue(session)
        ids = jobs_needing_a_message(
            session, resend_after=0.0 if send_all else settings.resend_after_seconds
        )
        mark_enqueued(session, ids)
    sent = [i for i in ids if send_run_job(settings, i)]
    purged = purge_superseded(settings, actor="tick")
    if cut or sent or purged or retried:
        log.info(
            "tick: cut job %s, retried %s, sent %s, purged %d folders",
            cut,
            retried,
            sent,
            len(purged),
        )
    return {
        "cut": cut,
        "retried": retried,
        "deadline_consolidation": deadline.id if deadline is not None else None,
        "sent": sent,
        "purged": len(purged),
    }
