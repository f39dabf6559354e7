"""End to end: from forget requests to the adapter that forgets them serving, for batches of
10 and 100 users, through the real stack (API, Celery worker and beat, Redis, PostgreSQL).

The base model (tiny, trained on a synthetic catalogue) is trained once into ``--work``. With
``--regime memorising`` it is trained the way the memorising benchmark trains its Original: the
users the bench will forget (1..N for the largest batch) are seen ``--repeat`` times an epoch,
and every epoch runs (no early stopping), so there is something to forget and the forget loss,
held-out (audit) loss and attack AUC before and after show whether it was. For each batch size,
a fresh PostgreSQL database gets the catalogue and the base; the API, a worker and beat start as
processes; N forget requests are sent (the batch is cut when the N-th arrives); the clock stops
when every request is completed and ``/ready`` reports the new adapter. Writes
``worker_e2e.json`` and ``worker_e2e.md``.

    python -m bench.worker_e2e --regime memorising --out bench/results/worker-e2e-memorising-cpu
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated

import httpx
import typer

from bench.common import (
    clean_env,
    command_line,
    machine,
    name_values,
    start,
    stop,
    stop_cleanly_on_sigterm,
)
from service.testing import throwaway_database

KEY = "bench-key-0123456789abcdef"
# The salt picks the audit users (never trained on): the base and the stack must share it.
SALT = "bench-salt-0123456789"
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def train_once(
    work: Path,
    users: int,
    items: int,
    per_user: int,
    epochs: int,
    memorise: set[int] | None = None,
    repeat: int = 1,
    backbone: str = "tiny",
    negatives: float = 0.0,
    negatives_from: str = "co-occurrence",
) -> dict:
    """The catalogue and a trained base, kept in ``work`` across runs."""
    from e2urec.data import SyntheticConfig, generate_synthetic
    from service.cli import migrate_database
    from service.core.db.session import session_scope
    from service.core.settings import Settings
    from service.domain.bootstrap import train_base
    from service.domain.importer import import_dataset

    recipe_file = work / "recipe.json"
    if recipe_file.exists():
        recipe = json.loads(recipe_file.read_text())
        if recipe.get("backbone", "tiny") != backbone:
            raise SystemExit(f"{work} holds a {recipe.get('backbone', 'tiny')} base: delete it")
        if recipe.get("salt") != SALT:
            raise SystemExit(
                f"{work} holds a base trained with another salt (other audit users): delete it"
            )
        return recipe
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'train.db'}"
    dataset = generate_synthetic(
        SyntheticConfig(users=users, items=items, ratings_per_user=per_user, seed=3)
    )
    migrate_database(url)
    with session_scope(url) as session:
        import_dataset(session, dataset, {"format": "synthetic"})
    settings = Settings(data_dir=work, database_url=url, user_hash_salt=SALT)
    recipe = train_base(
        settings,
        work / "base",
        backbone=backbone,
        epochs=epochs,
        lr=3e-3 if backbone == "tiny" else None,  # a pretrained LLM takes its own recipe's
        samples=0,
        seed=0,
        log=print,
        memorise_users=memorise,
        repeat=repeat,
        early_stop=not memorise,
        negatives=negatives or None,
        negatives_from=negatives_from if negatives else None,
    )
    recipe["salt"] = SALT
    recipe["backbone"] = backbone
    recipe_file.write_text(json.dumps(recipe, default=str))
    return recipe


def populate(url: str, work: Path, users: int, items: int, per_user: int, recipe: dict) -> None:
    from e2urec.data import SyntheticConfig, generate_synthetic
    from service.cli import migrate_database
    from service.core.db.session import session_scope
    from service.domain.importer import import_dataset
    from service.domain.registry import register_base

    dataset = generate_synthetic(
        SyntheticConfig(users=users, items=items, ratings_per_user=per_user, seed=3)
    )
    migrate_database(url)
    with session_scope(url) as session:
        import_dataset(session, dataset, {"format": "synthetic"})
    with session_scope(url) as session:
        register_base(session, work / "base", actor="bench", metrics=recipe)


class HealthWatch:
    """Polls ``/health`` once a second from its own thread while a batch runs: how responsive
    the API stays while a worker trains on the same cores."""

    def __init__(self, base: str):
        self.base = base
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=300) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    r = client.get("/health")
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.perf_counter() - started)
                self._stop.wait(1.0)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(320)

    def summary(self) -> dict:
        ordered = sorted(self.latencies) or [float("nan")]
        return {
            "polls": len(self.latencies),
            "failed": len(self.failures),
            "p50_ms": ordered[len(ordered) // 2] * 1000,
            "max_ms": ordered[-1] * 1000,
            "over_1s": sum(t > 1.0 for t in self.latencies),
        }


def run_batch(
    n: int,
    url: str,
    work: Path,
    redis_url: str,
    port: int,
    settings: dict[str, str],
    timeout: float,
) -> dict:
    data_dir = work / f"run-{n}-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    private = uuid.uuid4().hex[:8]
    env = clean_env(
        E2UREC_DATABASE_URL=url,
        E2UREC_DATA_DIR=str(data_dir),
        E2UREC_REDIS_URL=redis_url,
        E2UREC_API_KEYS=f"{KEY}:forget+recommend+admin",
        E2UREC_USER_HASH_SALT=SALT,
        E2UREC_QUEUE_UNLEARNING=f"bench.{private}.unlearning",
        E2UREC_QUEUE_CONTROL=f"bench.{private}.control",
        E2UREC_MODEL_CHANNEL=f"bench:{private}",
        E2UREC_BATCH_SIZE=str(n),
        E2UREC_TICK_SECONDS="2",
        **{f"E2UREC_{k.upper()}": v for k, v in settings.items()},
    )
    celery = [sys.executable, "-m", "celery", "-A", "worker.app"]
    queues = f"bench.{private}.unlearning,bench.{private}.control"
    procs = [
        start(
            [
                sys.executable,
                "-m",
                "service.cli",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env,
            data_dir / "api.log",
        ),
        start(
            [*celery, "worker", "-Q", queues, "--concurrency", "2", "--loglevel", "INFO"],
            env,
            data_dir / "worker.log",
        ),
        start(
            [*celery, "beat", "-s", str(data_dir / "beat"), "--loglevel", "WARNING"],
            env,
            data_dir / "beat.log",
        ),
    ]
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {KEY}"}
    stack = contextlib.ExitStack()
    try:
        deadline = time.monotonic() + 300  # a pretrained LLM loads and probes for a while
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not become ready")
            time.sleep(0.2)
        # A long timeout: on a real LLM the API shares two cores with the training worker, and
        # how slow it gets is what HealthWatch measures, not a reason to abandon the batch.
        client = httpx.Client(base_url=base, timeout=300, headers=headers)
        watch = HealthWatch(base)
        stack.enter_context(watch)
        started = time.perf_counter()
        ids = []
        for user in range(1, n + 1):
            r = client.post(f"/forget/{user}")
            r.raise_for_status()
            ids.append(r.json()["request_id"])
        accepted = time.perf_counter() - started
        adapter, failed = None, None
        deadline = time.monotonic() + timeout
        while adapter is None and failed is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no job ended within {timeout:.0f}s: see {data_dir}")
            view = client.get("/admin/queue").json()
            job = view["recent_jobs"][0] if view["recent_jobs"] else None
            if job and job["status"] == "failed":
                failed = job["error"]  # e.g. the gate refused it: reported, not hidden
            if job and job["status"] == "succeeded":
                adapter = job["adapter_version"]
            time.sleep(0.5)
        completed = time.perf_counter() - started
        serving = float("nan")
        if failed is None:
            while client.get("/ready").json()["model_version"] != f"base-1/adapter-{adapter}":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"adapter {adapter} never served: see {data_dir}")
                time.sleep(0.1)
            serving = time.perf_counter() - started
            statuses = {client.get(f"/forget/requests/{i}").json()["status"] for i in ids}
            assert statuses == {"completed"}, statuses
        job = client.get(f"/admin/jobs/{job['id']}").json()
        stack.close()  # the watch stops before the processes do
    finally:
        stack.close()
        for proc in procs:
            stop(proc)
    m = job["metrics"]
    return {
        "users": n,
        "settings": settings,
        "status": "published" if failed is None else f"refused: {failed}",
        "accept_seconds": accepted,
        "completed_seconds": completed,
        "serving_seconds": serving,
        "job_seconds": job["duration_seconds"],
        "health_while_running": watch.summary(),
        "forget_samples": m["forget_samples"],
        "retain_samples": m["retain_samples"],
        "stage_seconds": m["stage_seconds"],
        "stopped": m["stopped"],
        "gate": m["gate"],
        "teacher_forget_loss": m.get("teacher_forget_loss", {}),
        "augment": m.get("augment", {}),
        "alpha": m.get("alpha"),
    }


def negatives_note(train_config: dict) -> str:
    if not train_config.get("negatives"):
        return ""
    return (
        f"; {train_config['negatives']:g} unrated negative(s) a sample drawn by "
        f"{train_config['negatives_from']}, which the worker forgets and keeps too"
    )


def settings_note(overrides: dict[str, str]) -> str:
    if not overrides:
        return ""
    return (
        " (service settings changed: " + ", ".join(f"`{k}={v}`" for k, v in overrides.items()) + ")"
    )


def serving_cell(r: dict) -> str:
    """When the batch's adapter served, or that none did: a refused job leaves the users
    quarantined and the serving model as it was (fail closed), which is no serving time."""
    if r["status"].startswith("refused: quality gate"):
        return "never (refused by the gate)"
    if r["status"] != "published":
        return "never (the job failed)"
    return f"{r['serving_seconds']:.1f}s"


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="results folder")],
    work: Annotated[Path, typer.Option(help="scratch folder (base model kept here)")] = Path(
        "runs/bench-worker"
    ),
    batches: Annotated[list[int] | None, typer.Option(help="users per batch")] = None,
    users: int = 400,
    items: int = 300,
    per_user: int = 30,
    epochs: int = 4,
    regime: Annotated[
        str, typer.Option(help="'paper' (early-stopped base) or 'memorising' (see above)")
    ] = "memorising",
    repeat: int = 4,
    backbone: Annotated[
        str,
        typer.Option(help="'tiny', or 'smollm2-135m' (a real LLM: shrink the job with --setting)"),
    ] = "tiny",
    setting: Annotated[
        list[str] | None,
        typer.Option(
            help="a service setting for the stack, NAME=VALUE (e.g. valid_samples=100); repeatable"
        ),
    ] = None,
    negatives: Annotated[
        float,
        typer.Option(
            help="unrated negatives per sample for the base (e2urec train --negatives): the "
            "worker then unlearns a base trained on them"
        ),
    ] = 0.0,
    negatives_from: Annotated[
        str, typer.Option(help="popularity or co-occurrence (with --negatives)")
    ] = "co-occurrence",
    timeout: Annotated[float, typer.Option(help="seconds a batch may take")] = 3600.0,
    pg: Annotated[str, typer.Option(help="PostgreSQL admin URL")] = (
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    redis_url: str = "redis://127.0.0.1:6379/0",
    port: int = 8766,
) -> None:
    stop_cleanly_on_sigterm()
    sizes = batches or [10, 100]
    if regime not in ("paper", "memorising"):
        raise typer.BadParameter("choose 'paper' or 'memorising'", param_hint="--regime")
    overrides = {
        name.strip().lower(): value.strip()
        for name, value in name_values(setting or [], "--setting").items()
    }
    memorise = set(range(1, max(sizes) + 1)) if regime == "memorising" else None
    # a base per regime, backbone and negatives
    work = work / (
        f"{regime}-{backbone}" + (f"-negatives-{negatives:g}-{negatives_from}" if negatives else "")
    )
    recipe = train_once(
        work, users, items, per_user, epochs, memorise, repeat, backbone, negatives, negatives_from
    )

    results = []
    for n in sizes:
        with throwaway_database(pg) as url:
            populate(url, work, users, items, per_user, recipe)
            r = run_batch(n, url, work, redis_url, port, overrides, timeout)
        results.append(r)
        print(
            f"{n} users: accepted in {r['accept_seconds']:.1f}s, completed after "
            f"{r['completed_seconds']:.1f}s ({r['status'][:60]}), adapter serving: "
            f"{serving_cell(r)} "
            f"(job {r['job_seconds']:.1f}s, {r['forget_samples']} forget samples)",
            flush=True,
        )
    command = command_line()
    out.mkdir(parents=True, exist_ok=True)
    (out / "worker_e2e.json").write_text(
        json.dumps(
            {"command": command, "recipe": recipe, "results": results}, indent=2, default=str
        )
    )
    lines = [
        f"From the first `POST /forget` to the adapter that forgets the batch serving, through "
        f"the real stack (uvicorn API, Celery worker and beat, Redis, PostgreSQL), `{backbone}` "
        f"backbone on the CPU{settings_note(overrides)}. Synthetic catalogue: {users} users, "
        f"{items} items, {per_user} ratings each; base trained {recipe.get('seconds', 0):.0f}s "
        f"on {recipe.get('train_samples')} samples ({regime} regime: "
        f"{recipe.get('memorised_users', 0)} users seen "
        f"{recipe.get('repeat', 1)}x an epoch, early stopping "
        f"{'on' if recipe.get('early_stop', True) else 'off'}"
        + negatives_note(recipe.get("train_config", {}))
        + "). Held-out loss and the attack "
        "use the audit users (never trained on, same period); the attack sets one threshold "
        "per label.",
        "",
        "| users | forget samples | requests accepted | job ended | adapter serving | "
        "job | E2URec stages | stop | forget loss before -> after (teacher asked) | "
        "held-out loss before -> after | valid AUC before -> after | "
        "MIA AUC before -> after (gate's bound) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        g = r["gate"]
        stages = ", ".join(f"{k} {v:.0f}s" for k, v in r["stage_seconds"].items())
        lines.append(
            f"| {r['users']} | {r['forget_samples']} | {r['accept_seconds']:.1f}s | "
            f"{r['completed_seconds']:.1f}s | {serving_cell(r)} | "
            f"{r['job_seconds']:.1f}s | {stages} | {r['stopped']} | "
            f"{g['forget_logloss_before']:.3f} -> {g['forget_logloss_after']:.3f} "
            f"({r['teacher_forget_loss'].get('forced', float('nan')):.3f}) | "
            f"{g['audit_logloss_before']:.3f} -> {g['audit_logloss_after']:.3f} | "
            f"{g['valid_auc_before']:.3f} -> {g['valid_auc_after']:.3f} | "
            f"{g['mia_auc_before']:.3f} -> {g['mia_auc_after']:.3f} "
            f"({g.get('mia_threshold', float('nan')):.3f}) |"
        )
    lines += [""] + [
        f"`/health` while the {r['users']}-user batch ran (polled each second from another "
        f"thread): {h['polls']} polls, {h['failed']} failed, median {h['p50_ms']:.0f} ms, "
        f"slowest {h['max_ms']:.0f} ms, {h['over_1s']} over 1 s."
        for r in results
        if (h := r.get("health_while_running"))
    ]
    lines += [
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}",
    ]
    (out / "worker_e2e.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app()
