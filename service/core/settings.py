"""Every setting of the service and the worker, in one place (environment prefix ``E2UREC_``).

The defaults are the embedded mode: a SQLite file and the adapter registry under ``var/``,
Redis on localhost, no API keys (so every protected route answers 401 until keys are set).
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Scope(StrEnum):
    forget = "forget"
    recommend = "recommend"
    admin = "admin"
    metrics = "metrics"  # only for GET /metrics, when E2UREC_METRICS_REQUIRE_KEY is set


# Markers of the values shipped in .env.example and the docs; never valid in a deployment.
PLACEHOLDERS = ("change-me", "changeme", "replace-me", "example", "placeholder", "secret123")


def _placeholder(value: str) -> bool:
    lowered = value.lower()
    return any(marker in lowered for marker in PLACEHOLDERS) or len(set(value)) < 6


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="E2UREC_",
        env_file=None,
        extra="ignore",
        hide_input_in_errors=True,  # a refused secret is never echoed into a log
    )

    # -- storage ---------------------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="Embedded state: SQLite file, models, adapters")
    database_url: str = Field(
        "", description="SQLAlchemy URL; default sqlite:///<data_dir>/e2urec.db"
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Celery broker and the adapter-swap notice channel; empty disables pub/sub",
    )
    broker_url: str = Field(
        "",
        description="Celery broker; default the Redis URL (sqla+sqlite:///var/broker.db runs "
        "without Redis)",
    )
    model_channel: str = Field(
        "e2urec:models", description="Redis pub/sub channel announcing a new active model"
    )
    model_path: Path | None = Field(
        None, description="Base LLMRec folder (from `e2urec train`); default <data_dir>/models/base"
    )
    registry_dir: Path | None = Field(
        None, description="Adapter registry folder; default <data_dir>/adapters"
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1 ... (default: cuda if present)")

    # -- API -------------------------------------------------------------------------------
    api_keys: Annotated[dict[str, list[Scope]], NoDecode] = Field(
        default_factory=dict,
        description='API keys and their scopes: "key1:forget+recommend,key2:admin" or JSON',
    )
    user_hash_salt: SecretStr = Field(
        SecretStr(""),
        description="Salt of the user-id hashes kept after deletion; default: generated once "
        "and stored in <data_dir>/user_hash_salt",
    )
    signing_key: SecretStr = Field(
        SecretStr(""),
        description="Ed25519 key (32 bytes, hex) that signs deletion receipts; default: "
        "generated once and stored in <data_dir>/receipt_signing_key",
    )
    max_k: int = Field(100, ge=1, description="Largest k /recommend accepts")
    max_candidates: int = Field(200, ge=1, description="Longest explicit candidates= list")
    candidate_pool: int = Field(50, ge=1, description="Candidates the first stage hands the LLM")
    rank_by: Literal["blend", "llm"] = Field(
        "blend",
        description="Order of the candidates: blend = the candidate stage's score times the "
        "LLM's P(like), i.e. P(rated) x P(like if rated); llm = P(like) alone. Explicit "
        "candidates= lists have no stage score and are ordered by P(like)",
    )
    like_weight: float = Field(
        1.0,
        ge=0,
        description="With rank_by=blend, the weight on log P(like) against log stage score: 1 = "
        "the plain product, 0 = the candidate stage's order. It belongs to a model: fit it with "
        "python -m bench.ranking --period test --period valid (its 'fitted on valid' line)",
    )
    history_len: int = Field(10, ge=1, description="Rated items shown in the prompt (K)")
    recent_items: int = Field(20, ge=1, description="Recent items that seed co-occurrence")
    catalog_refresh_seconds: float = Field(
        300.0, gt=0, description="Rebuild the candidate index this often (new users and ratings)"
    )

    # -- inference engine ------------------------------------------------------------------
    max_batch_rows: int = Field(
        256, ge=1, description="Candidate rows per model batch (several requests share one)"
    )
    max_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits to fill up")
    batching: bool = Field(True, description="Batch concurrent requests into one model pass")
    prefix_reuse: bool = Field(True, description="Encode a user's prompt prefix once (KV cache)")
    adapter_poll_seconds: float = Field(
        10.0, gt=0, description="Database poll for a new adapter (fallback to pub/sub)"
    )
    metrics_require_key: bool = Field(
        False, description="GET /metrics asks for a key with the metrics (or admin) scope"
    )
    score_timeout_seconds: float = Field(
        30.0, gt=0, description="GET /recommend waits this long for the engine, then answers 503"
    )
    probe_tolerance: float = Field(
        1e-3, gt=0, description="Smoke test: probe scores must match the worker's within this"
    )

    # -- unlearning worker ------------------------------------------------------------------
    queue_unlearning: str = Field("e2urec.unlearning", description="Celery queue of the jobs")
    queue_control: str = Field("e2urec.control", description="Celery queue of the ticks")
    batch_size: int = Field(10, ge=1, description="Cut a batch when this many requests wait")
    batch_max_wait_seconds: float = Field(
        300.0, ge=0, description="... or when the oldest request has waited this long"
    )
    batch_max_requests: int = Field(1000, ge=1, description="Largest batch")
    tick_seconds: float = Field(10.0, gt=0, description="Celery beat: batching and reconciling")
    lease_seconds: float = Field(
        60.0, gt=0, description="A running job's lease; renewed every few seconds while it runs"
    )
    max_attempts: int = Field(3, ge=1, description="Runs of one job before it is failed")
    resend_after_seconds: float = Field(
        30.0, gt=0, description="Re-send a job message not picked up after this long"
    )
    retain_ratio: float = Field(4.0, gt=0, description="Retain samples per forget sample")
    retain_max: int = Field(20_000, ge=1, description="Most retain samples per job")
    valid_samples: int = Field(2000, ge=10, description="Held-out samples for the checks")
    unlearn_max_epochs: int = Field(5, ge=2, description="E2URec epochs at most")
    unlearn_min_steps: int = Field(
        60, ge=0, description="E2URec steps per epoch at least (small batches cycle the data)"
    )
    unlearn_checks_per_epoch: int = Field(
        2, ge=1, description="E2URec stop-rule checks per epoch (each scores the held-out samples)"
    )
    unlearn_activation_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in E2URec's backward passes: a fraction of the "
        "memory for one more forward a step; auto: on for an all-linear student, a continued "
        "all-linear serving adapter's included (a SmolLM2 step needs 19.2 GB without, 10.9 GB "
        "with)",
    )
    unlearn_student_modules: Literal["auto", "qv", "all-linear"] = Field(
        "auto",
        description="Layers the E2URec student's LoRA adapts: auto (those the base's training "
        "adapted: all-linear for a pretrained LLM's LoRA recipe, else qv), qv (the paper's) or "
        "all-linear (forgot where qv did not on SmolLM2, for about 1.5x the step memory); a job "
        "that warm-starts from the serving adapter keeps that adapter's layers",
    )
    audit_fraction: float = Field(
        0.1,
        ge=0,
        lt=0.5,
        description="Users the base never trains on: same-period non-members for the checks",
    )
    gate_max_auc_drop: float = Field(
        0.02, ge=0, description="Quality gate: validation AUC may fall at most this much"
    )
    gate_mia_band: float = Field(
        0.02,
        ge=0,
        description="Quality gate: attack AUC tolerated above 0.5 (beyond sampling noise)",
    )
    gate_false_alarm: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Quality gate: chance of failing a deletion that did forget (one-sided)",
    )
    gate_memorised_mia: float = Field(
        0.65,
        gt=0.5,
        le=1.0,
        description="Quality gate: the attack AUC of a no-op on memorised users it must catch",
    )
    batch_wait_for_gate_power: bool = Field(
        True,
        description="Hold a batch until it has the forget samples the gate needs for its power",
    )
    batch_gather_max_seconds: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="A batch short of the gate's forget samples waits at most this long for "
        "more requests, then the base is consolidated instead (keep it below the deadline)",
    )
    gate_power: float = Field(
        0.9,
        gt=0.5,
        lt=1.0,
        description="Quality gate: chance of failing that no-op; batches wait for the forget "
        "samples this needs",
    )
    job_auto_retries: int = Field(
        2,
        ge=0,
        description="A failed job is retried this many times (then an alert, requests stay open)",
    )
    job_retry_backoff_seconds: float = Field(
        300.0, ge=0, description="First automatic retry after this long; doubled each time"
    )
    forget_deadline_seconds: float = Field(
        30 * 24 * 3600.0,
        gt=0,
        description="Every request must complete within this (the legal one-month limit)",
    )
    forget_deadline_margin_seconds: float = Field(
        3 * 24 * 3600.0,
        ge=0,
        description="This long before the deadline, a consolidation is queued for what is open",
    )
    orphan_grace_seconds: float = Field(
        600.0, ge=0, description="Registry folders no row names are deleted after this long"
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value):
        """Accept JSON (``{"k": ["forget"]}``) or ``key:scope+scope,key2:scope``."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return {}
        if text.startswith("{"):
            import json

            return json.loads(text)
        keys: dict[str, list[str]] = {}
        for part in text.split(","):
            key, sep, scopes = part.strip().partition(":")
            if not sep or not key or not scopes:
                raise ValueError(
                    f"API key entry {part.strip()!r} must look like key:scope+scope "
                    f"(scopes: {', '.join(s.value for s in Scope)})"
                )
            keys[key] = scopes.split("+")
        return keys

    @model_validator(mode="after")
    def _check_secrets(self) -> Settings:
        # A deployment that copies .env.example must not run with a public admin key, nor with
        # a salt anyone can use to reverse the kept user hashes by enumerating ids.
        fix = "generate fresh ones with `e2urec-service gen-secrets` (writes a new .env)"
        for key in self.api_keys:
            if len(key) < 16:
                raise ValueError(f"every API key must be at least 16 characters long; {fix}")
            if _placeholder(key):
                raise ValueError(f"E2UREC_API_KEYS holds a placeholder key ({key[:12]}...); {fix}")
        salt = self.user_hash_salt.get_secret_value()
        if salt and (len(salt) < 16 or _placeholder(salt)):
            raise ValueError(
                "E2UREC_USER_HASH_SALT is a placeholder or shorter than 16 characters; "
                f"{fix}, or leave it unset to have one generated in the data directory"
            )
        return self

    # -- derived paths -----------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'e2urec.db'}"

    @property
    def celery_broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def base_model_path(self) -> Path:
        return self.model_path or self.data_dir / "models" / "base"

    @property
    def adapter_dir(self) -> Path:
        return self.registry_dir or self.data_dir / "adapters"

    def gate_min_forget_samples(self) -> int | None:
        """The fewest forget samples with which the quality gate fails a no-op adapter on users
        memorised to ``gate_memorised_mia`` with probability ``gate_power`` (its held-out side
        at ``valid_samples`` audit samples, the most a job uses). None: no batch can."""
        from e2urec.metrics import min_forget_samples

        return min_forget_samples(
            self.gate_memorised_mia,
            self.valid_samples,
            self.gate_mia_band,
            self.gate_false_alarm,
            self.gate_power,
        )

    def signer(self):
        """The receipt signer: the configured key, else one generated once in the data dir."""
        from service.domain.receipts import Signer

        if self.signing_key.get_secret_value():
            return Signer.from_seed_hex(self.signing_key.get_secret_value())
        return Signer.from_file(self.data_dir / "receipt_signing_key")

    def salt(self) -> bytes:
        """The user-hash salt: from settings, else generated once and kept in the data dir."""
        if self.user_hash_salt.get_secret_value():
            return self.user_hash_salt.get_secret_value().encode()
        from service.core.security import secret_file

        return secret_file(self.data_dir / "user_hash_salt").encode()


def settings_table() -> str:
    """Every setting as a Markdown table row: environment variable, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = "(generated)" if not default.get_secret_value() else "(set)"
        elif default in ("", None, {}):
            default = "-"
        rows.append(f"| `E2UREC_{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows)


@lru_cache
def get_settings() -> Settings:
    return Settings()
