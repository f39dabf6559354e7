"""Real Celery workers and beat in subprocesses, on private queue names, for the worker tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker_env(settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The settings as E2UREC_* variables, for a process started from a test."""
    values = {
        "E2UREC_DATABASE_URL": settings.db_url,
        "E2UREC_DATA_DIR": str(settings.data_dir),
        "E2UREC_REDIS_URL": settings.redis_url,
        "E2UREC_QUEUE_UNLEARNING": settings.queue_unlearning,
        "E2UREC_QUEUE_CONTROL": settings.queue_control,
        "E2UREC_MODEL_CHANNEL": settings.model_channel,
        "E2UREC_USER_HASH_SALT": settings.user_hash_salt.get_secret_value(),
        "E2UREC_TICK_SECONDS": str(settings.tick_seconds),
        "E2UREC_LEASE_SECONDS": str(settings.lease_seconds),
        "E2UREC_BATCH_SIZE": str(settings.batch_size),
        "E2UREC_BATCH_MAX_WAIT_SECONDS": str(settings.batch_max_wait_seconds),
        "E2UREC_RESEND_AFTER_SECONDS": str(settings.resend_after_seconds),
        "E2UREC_RETAIN_RATIO": str(settings.retain_ratio),
        "E2UREC_VALID_SAMPLES": str(settings.valid_samples),
        "E2UREC_UNLEARN_MAX_EPOCHS": str(settings.unlearn_max_epochs),
        # What these tests' worker processes always ran with (the default was 30 until it rose
        # to 60 with the memorising benchmark): their jobs keep the length the fault tests need.
        "E2UREC_UNLEARN_MIN_STEPS": "30",
        "E2UREC_GATE_MAX_AUC_DROP": str(settings.gate_max_auc_drop),
        "E2UREC_GATE_MIA_BAND": str(settings.gate_mia_band),
        "E2UREC_GATE_FALSE_ALARM": str(settings.gate_false_alarm),
        "E2UREC_BATCH_WAIT_FOR_GATE_POWER": str(settings.batch_wait_for_gate_power).lower(),
        "E2UREC_DEVICE": "cpu",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2UREC_")}
    return env | values | (extra or {})


class CeleryProcess:
    """``celery worker`` or ``celery beat`` as its own process group (so SIGKILL takes the
    pool's children too), logging to a file the test can show on failure."""

    def __init__(self, settings, kind: str, log_dir: Path, extra_env: dict | None = None):
        self.settings = settings
        self.kind = kind
        self.name = f"test-{uuid.uuid4().hex[:8]}"
        self.log_path = log_dir / f"{kind}-{self.name}.log"
        self.extra_env = extra_env
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        base = [sys.executable, "-m", "celery", "-A", "worker.app"]
        if self.kind == "beat":
            schedule = self.log_path.with_suffix(".schedule")
            return [*base, "beat", "-s", str(schedule), "--loglevel", "INFO"]
        queues = f"{self.settings.queue_unlearning},{self.settings.queue_control}"
        return [
            *base,
            "worker",
            "-Q",
            queues,
            "--concurrency",
            "2",
            "--prefetch-multiplier",
            "1",
            "-n",
            f"{self.name}@%h",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]

    def start(self) -> CeleryProcess:
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=worker_env(self.settings, self.extra_env),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group: no warm shutdown, nothing acknowledged."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        if hasattr(self, "log"):
            self.log.close()

    def stop_warm(self, timeout: float) -> None:
        """SIGTERM to the main process only, as a process manager sends it: Celery's warm
        shutdown lets the running task finish. (Signalling the whole group would kill the pool
        children mid-task.) Falls back to a kill after ``timeout`` seconds."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if hasattr(self, "log"):
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def __enter__(self) -> CeleryProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
