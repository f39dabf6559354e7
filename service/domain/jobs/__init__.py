"""The unlearning queue, kept in the database (the source of truth; Celery only carries ids).

* Batching: pending forget requests are claimed into a job when there are enough of them or the
  oldest has waited long enough.
* Claiming: one job runs at a time, oldest first, under a lease the running worker renews. A
  crashed worker's lease runs out and the next claim takes the job over; a duplicate message
  finds the job already claimed, or done, and does nothing.
* Finishing: publishing an adapter, completing the requests, writing their certificates and
  deleting the users' data happen in one transaction, guarded by the lease.

Every function here runs inside the caller's transaction and serialises on one queue lock
(``pg_advisory_xact_lock`` on PostgreSQL; SQLite's writers are serialised already).
"""

from __future__ import annotations

from service.domain.jobs.completion import (
    Published,
    complete_without_training,
    finish_consolidation,
    publish_and_complete,
)
from service.domain.jobs.lease import LeaseLost, claim_next_job, fail_job, hold_lease, renew_lease
from service.domain.jobs.queue import (
    QUEUE_LOCK,
    BatchPolicy,
    auto_retry_failed,
    cut_batch,
    deadline_fallback,
    forget_sample_count,
    jobs_needing_a_message,
    lock_queue,
    mark_enqueued,
    request_consolidation,
    retry_job,
)

__all__ = [
    "BatchPolicy",
    "QUEUE_LOCK",
    "auto_retry_failed",
    "cut_batch",
    "deadline_fallback",
    "forget_sample_count",
    "jobs_needing_a_message",
    "lock_queue",
    "mark_enqueued",
    "request_consolidation",
    "retry_job",
    "LeaseLost",
    "claim_next_job",
    "fail_job",
    "hold_lease",
    "renew_lease",
    "Published",
    "complete_without_training",
    "finish_consolidation",
    "publish_and_complete",
]
