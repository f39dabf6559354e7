"""The Celery application: Redis broker, a dedicated queue for unlearning jobs, beat ticks.

Run a worker with ``celery -A worker.app worker -Q e2urec.unlearning,e2urec.control`` and the
ticks with ``celery -A worker.app beat`` (the README shows the whole stack).
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from service.core.settings import Settings, get_settings
from service.domain.tasks_client import RUN_JOB, TICK


def make_celery(settings: Settings) -> Celery:
    app = Celery("e2urec", broker=settings.celery_broker or "redis://127.0.0.1:6379/0")
    app.conf.update(
        include=["worker.tasks"],
        task_default_queue=settings.queue_control,
        task_routes={
            RUN_JOB: {"queue": settings.queue_unlearning},
            TICK: {"queue": settings.queue_control},
        },
        # A job's message is acknowledged only when the job is over, one message at a time:
        # a worker that dies mid-job leaves it unacknowledged rather than lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Redis re-delivers an unacknowledged message after the visibility timeout, even to
        # a second worker while the first still runs it. Keep it well beyond a job's length;
        # if a job outlives it anyway, the duplicate finds the job leased and does nothing.
        broker_transport_options={"visibility_timeout": 6 * 3600},
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_send_task_events=True,  # Flower shows tasks live
        task_send_sent_event=True,
        beat_schedule={
            "tick": {"task": TICK, "schedule": settings.tick_seconds, "args": [False]},
        },
    )
    return app


app = make_celery(get_settings())


@worker_ready.connect
def _start_heartbeat(sender, **_):
    from worker.heartbeat import start_heartbeat

    queues = ",".join(q.name for q in sender.app.amqp.queues.consume_from.values())
    start_heartbeat(get_settings(), sender.hostname, queues)


@worker_shutdown.connect
def _stop_heartbeat(sender, **_):
    from worker.heartbeat import stop_heartbeat

    stop_heartbeat()
