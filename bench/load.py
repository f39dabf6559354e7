"""Load on loopback: ``/recommend`` throughput and latency, ``POST /forget`` intake with
PostgreSQL, and both at once while adapters are hot-swapped. Zero failed requests is the bar.

The API runs as its own process (``e2urec-service serve``) on a fresh PostgreSQL database with
a synthetic catalogue and a tiny base; the load comes from an asyncio HTTP client in this
process. During the mixed phase the active adapter changes every few seconds (registry update
plus Redis notice), exactly as the worker publishes one. Writes ``load.json`` and ``load.md``.

    python -m bench.load --out bench/results/load-cpu
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated

import httpx
import typer

from bench.common import (
    ROOT,
    clean_env,
    command_line,
    machine,
    start_api,
    stop,
    stop_cleanly_on_sigterm,
)
from service.testing import (
    ADMIN_KEY,
    KEYS,
    make_settings,
    prepare_database,
    random_adapter,
    small_dataset,
    throwaway_database,
    tiny_base_folder,
)

ADMIN = ADMIN_KEY
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0.0


def summary(lat: list[float], failed: list[str], elapsed: float, concurrency: int, **extra) -> dict:
    """One phase's numbers: successes, failures (the first few kept), rate and latencies."""
    return {
        "requests": len(lat),
        "failed": len(failed),
        "failures": failed[:5],
        "rps": len(lat) / elapsed,
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "concurrency": concurrency,
        **extra,
    }


async def recommend_load(url: str, users: int, concurrency: int, seconds: float) -> dict:
    lat: list[float] = []
    failed: list[str] = []
    versions: set[str] = set()
    unpersonalised = 0
    deadline = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient, k: int) -> None:
        nonlocal unpersonalised
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            started = time.perf_counter()
            try:
                r = await c.get(
                    "/recommend", params={"user_id": str(1 + (k * 97 + n) % users), "k": 10}
                )
            except httpx.HTTPError as exc:
                failed.append(repr(exc))
                continue
            if r.status_code != 200:
                failed.append(f"{r.status_code} {r.text[:100]}")
                continue
            lat.append(time.perf_counter() - started)
            v = r.json()["model_version"]
            versions.add(v["label"] if v else "none")
            unpersonalised += not r.json()["personalized"]  # fail closed while a swap loads

    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(
        base_url=url, timeout=60, headers=headers, limits=httpx.Limits(max_connections=concurrency)
    ) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client(c, k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summary(
        lat, failed, elapsed, concurrency, versions=sorted(versions), unpersonalised=unpersonalised
    )


async def impatient_load(
    url: str, users: int, impatient: int, patient: int, seconds: float, reference: dict
) -> dict:
    """Clients that give up mid-request (client timeouts of 20-400 ms: they disconnect) beside
    patient ones, against a server whose score timeout is short enough that some requests time
    out inside it too (503, documented). The patient clients' answers must be exactly the ones
    scored without load (``reference``); no other 5xx; the engine must stay alive."""
    import random

    out = {"gave_up": 0, "server_503": 0, "other_errors": [], "impatient_ok": 0}
    patient_ok, patient_503, worst = 0, 0, 0.0
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {ADMIN}"}

    async def rude(k: int) -> None:
        rng = random.Random(k)
        async with httpx.AsyncClient(base_url=url, headers=headers) as c:
            while time.perf_counter() < deadline:
                user = str(1 + rng.randrange(users))
                try:
                    r = await c.get(
                        "/recommend",
                        params={"user_id": user, "k": 10},
                        timeout=rng.uniform(0.1, 1.5),
                    )
                except httpx.TimeoutException:
                    out["gave_up"] += 1  # the client hung up mid-request
                    continue
                except httpx.HTTPError as exc:
                    out["other_errors"].append(repr(exc))
                    continue
                if r.status_code == 503 and "overloaded" in r.text:
                    out["server_503"] += 1
                elif r.status_code == 200:
                    out["impatient_ok"] += 1
                else:
                    out["other_errors"].append(f"{r.status_code} {r.text[:100]}")

    async def polite(k: int) -> None:
        nonlocal patient_ok, patient_503, worst
        keys = sorted(reference)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as c:
            n = 0
            while time.perf_counter() < deadline:
                user, candidates = keys[(k + n) % len(keys)]
                n += 1
                r = await c.get(
                    "/recommend", params={"user_id": user, "k": 50, "candidates": candidates}
                )
                if r.status_code == 503 and "overloaded" in r.text:
                    patient_503 += 1
                    continue
                if r.status_code != 200:
                    out["other_errors"].append(f"patient {r.status_code} {r.text[:100]}")
                    continue
                got = {i["item_id"]: i["score"] for i in r.json()["items"]}
                want = reference[(user, candidates)]
                worst = max(worst, max(abs(got[i] - v) for i, v in want.items()))
                patient_ok += 1

    started = time.perf_counter()
    await asyncio.gather(*(rude(k) for k in range(impatient)), *(polite(k) for k in range(patient)))
    elapsed = time.perf_counter() - started
    return out | {
        "other_5xx_or_errors": len(out["other_errors"]),
        "other_errors": out["other_errors"][:5],
        "patient_ok": patient_ok,
        "patient_503": patient_503,
        "patient_max_score_diff": worst,
        "impatient": impatient,
        "patient": patient,
        "seconds": elapsed,
    }


def reference_scores(url: str, users: list[str], candidates: str) -> dict:
    """Each user's scores for ``candidates`` with nothing else running."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    ref = {}
    for user in users:
        r = httpx.get(
            f"{url}/recommend",
            params={"user_id": user, "k": 50, "candidates": candidates},
            headers=headers,
            timeout=60,
        )
        r.raise_for_status()
        ref[(user, candidates)] = {i["item_id"]: i["score"] for i in r.json()["items"]}
    return ref


async def forget_load(
    url: str, user_ids: list[int], concurrency: int, seconds: float | None = None
) -> dict:
    """Forget every user once (expect 202). With ``seconds``, keep going until then by
    repeating requests for users already sent (idempotent: expect 200 and the same request)."""
    lat: list[float] = []
    failed: list[str] = []
    queue = list(user_ids)
    sent: list[int] = []
    repeats = 0
    deadline = time.perf_counter() + (seconds or 0.0)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal repeats
        while queue or (seconds and sent and time.perf_counter() < deadline):
            repeat = not queue
            user = sent[(len(lat) * 31) % len(sent)] if repeat else queue.pop()
            started = time.perf_counter()
            try:
                r = await c.post(f"/forget/{user}")
            except httpx.HTTPError as exc:
                failed.append(repr(exc))
                continue
            if r.status_code != (200 if repeat else 202):
                failed.append(f"{r.status_code} {r.text[:100]}")
                continue
            lat.append(time.perf_counter() - started)
            repeats += repeat
            if not repeat:
                sent.append(user)

    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(
        base_url=url, timeout=60, headers=headers, limits=httpx.Limits(max_connections=concurrency)
    ) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summary(lat, failed, elapsed, concurrency, repeats=repeats)


def swapper(
    settings, versions: list[int], every: float, stop: threading.Event, log: list, url: str
):
    """Activate the adapters in turn, as the worker does (registry, then notice), and time how
    long the server is behind the registry each time (it answers without personalisation
    meanwhile: fail closed)."""
    from service.core.db.models import AdapterVersion
    from service.core.db.session import session_scope
    from service.domain.model_changes import publish_model_change
    from service.domain.registry import activate_adapter

    k = 0
    while not stop.wait(every):
        version = versions[k % len(versions)]
        k += 1
        with session_scope(settings.db_url) as s:
            activate_adapter(s, s.get(AdapterVersion, version), actor="load-test")
        activated = time.perf_counter()
        publish_model_change(settings, str(version))
        want = f"base-1/adapter-{version}"
        while time.perf_counter() - activated < 30:
            if httpx.get(f"{url}/ready", timeout=10).json()["model_version"] == want:
                break
        log.append((version, time.perf_counter() - activated))


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="results folder")],
    seconds: Annotated[float, typer.Option(help="length of each phase")] = 20.0,
    concurrency: int = 16,
    users: int = 1000,
    port: int = 8767,
    redis_url: str = "redis://127.0.0.1:6379/0",
    pg: Annotated[str, typer.Option(help="PostgreSQL admin URL")] = (
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    impatient_timeout: Annotated[
        float, typer.Option(help="the server's score timeout in the impatient-clients phase")
    ] = 1.5,
) -> None:
    from e2urec.adapter_files import read_adapter
    from service.core.db.models import AdapterStatus, AdapterVersion
    from service.core.db.session import session_scope

    stop_cleanly_on_sigterm()
    work = ROOT / "runs" / f"bench-load-{uuid.uuid4().hex[:6]}"
    dataset = small_dataset(users=users, items=400, per_user=20, seed=4)
    base = tiny_base_folder(dataset, work / "base")
    results: dict = {}
    with throwaway_database(pg) as url:
        prepare_database(url, dataset, base)
        settings = make_settings(url, work / "data", redis_url=redis_url, adapter_poll_seconds=30.0)
        versions = []
        for k in range(3):
            folder = random_adapter(base, work / "adapters" / f"a{k}", seed=k)
            with session_scope(url) as s:
                row = AdapterVersion(
                    base_model_id=1,
                    path=str(folder),
                    checksum=read_adapter(folder).checksum,
                    status=AdapterStatus.ready,
                )
                s.add(row)
                s.flush()
                versions.append(row.id)
        env = clean_env(
            E2UREC_DATABASE_URL=url,
            E2UREC_DATA_DIR=str(work / "data"),
            E2UREC_REDIS_URL=redis_url,
            E2UREC_MODEL_CHANNEL=settings.model_channel,
            E2UREC_QUEUE_CONTROL=settings.queue_control,  # its ticks reach no worker here
            E2UREC_QUEUE_UNLEARNING=settings.queue_unlearning,
            E2UREC_API_KEYS=",".join(f"{k}:{'+'.join(v)}" for k, v in KEYS.items()),
            E2UREC_USER_HASH_SALT="load-salt-0123456789",
            E2UREC_ADAPTER_POLL_SECONDS="30",
        )
        proc = start_api(port, env)
        base_url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(recommend_load(base_url, users, 4, 3.0))  # warm-up
            results["recommend"] = asyncio.run(
                recommend_load(base_url, users, concurrency, seconds)
            )
            print("recommend:", results["recommend"], flush=True)
            first = list(range(users // 2 + 1, users // 2 + 1 + users // 4))
            results["forget"] = asyncio.run(forget_load(base_url, first, concurrency))
            print("forget:", results["forget"], flush=True)

            done, swaps = threading.Event(), []
            t = threading.Thread(
                target=swapper, args=(settings, versions, seconds / 5, done, swaps, base_url)
            )
            t.start()
            second = list(range(users // 2 + 1 + users // 4, users + 1))

            async def mixed():
                return await asyncio.gather(
                    recommend_load(base_url, users // 2, concurrency // 2, seconds),
                    forget_load(base_url, second, max(2, concurrency // 4), seconds),
                )

            rec, fg = asyncio.run(mixed())
            done.set()
            t.join()
            results["during_swaps"] = {
                "recommend": rec,
                "forget": fg,
                "swaps": len(swaps),
                "behind_seconds": [round(b, 3) for _, b in swaps],
            }
            print("during swaps:", results["during_swaps"], flush=True)
            metrics = httpx.get(f"{base_url}/metrics").text
            results["swap_pause"] = [
                line
                for line in metrics.splitlines()
                if line.startswith("e2urec_model_swap_pause_seconds_")
                and ("_sum" in line or "_count" in line)
            ]
        finally:
            stop(proc)
        # Clients that give up, against a server whose score timeout is short (its own
        # process: the other phases keep the default timeout).
        proc = start_api(port, env | {"E2UREC_SCORE_TIMEOUT_SECONDS": str(impatient_timeout)})
        try:
            polite_users = [str(u) for u in range(2, 10)]
            reference = reference_scores(base_url, polite_users, ",".join(map(str, range(1, 31))))
            results["impatient"] = asyncio.run(
                impatient_load(base_url, users // 2, concurrency // 2, 2, seconds, reference)
            )
            health = httpx.get(f"{base_url}/health", timeout=10)
            metrics = httpx.get(f"{base_url}/metrics").text

            def counter(name: str) -> float:
                found = [float(x.split()[1]) for x in metrics.splitlines() if x.startswith(name)]
                return found[0] if found else float("nan")

            results["impatient"] |= {
                "health_after": health.status_code,
                "engine_restarts": counter("e2urec_engine_restarts_total"),
                "dropped_unscored": counter("e2urec_engine_dropped_requests_total"),
            }
            print("impatient clients:", results["impatient"], flush=True)
        finally:
            stop(proc)
    command = command_line()
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps({"command": command, **results}, indent=2))
    r, f, m = results["recommend"], results["forget"], results["during_swaps"]
    x = results["impatient"]
    pause = {line.split()[0]: float(line.split()[1]) for line in results["swap_pause"]}
    mean_pause = pause.get("e2urec_model_swap_pause_seconds_sum", 0.0) / max(
        1.0, pause.get("e2urec_model_swap_pause_seconds_count", 0.0)
    )
    lines = [
        f"Loopback load on one API process (uvicorn, tiny backbone on the CPU, PostgreSQL, "
        f"{users} users); an asyncio client in another process, {seconds:.0f} s per phase.",
        "",
        "| phase | clients | requests | failed | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
        f"| `GET /recommend` (50 candidates scored) | {r['concurrency']} | {r['requests']} | "
        f"{r['failed']} | {r['rps']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |",
        f"| `POST /forget` (PostgreSQL) | {f['concurrency']} | {f['requests']} | {f['failed']} | "
        f"{f['rps']:.1f} | {f['p50_ms']:.0f} | {f['p99_ms']:.0f} |",
        f"| `GET /recommend` during {m['swaps']} adapter swaps | {m['recommend']['concurrency']}"
        f" | {m['recommend']['requests']} | {m['recommend']['failed']} | "
        f"{m['recommend']['rps']:.1f} | {m['recommend']['p50_ms']:.0f} | "
        f"{m['recommend']['p99_ms']:.0f} |",
        f"| `POST /forget` during the swaps ({m['forget']['repeats']} repeats, answered 200) "
        f"| {m['forget']['concurrency']} | "
        f"{m['forget']['requests']} | {m['forget']['failed']} | {m['forget']['rps']:.1f} | "
        f"{m['forget']['p50_ms']:.0f} | {m['forget']['p99_ms']:.0f} |",
        f"| `GET /recommend` from {x['impatient']} clients that hang up after 0.1-1.5 s, "
        f"server score timeout {impatient_timeout:g} s | {x['impatient']} | "
        f"{x['gave_up'] + x['server_503'] + x['impatient_ok']} ({x['gave_up']} hung up, "
        f"{x['server_503']} timed out: 503) | {x['other_5xx_or_errors']} | | | |",
        f"| ... beside them, patient clients (scores compared with an idle server's) | "
        f"{x['patient']} | {x['patient_ok'] + x['patient_503']} ({x['patient_503']} 503) | "
        f"{x['other_5xx_or_errors']} | | | |",
        "",
        f"Impatient phase: largest difference of a patient client's score from the idle "
        f"server's {x['patient_max_score_diff']:.1e}; /health after it {x['health_after']}; "
        f"engine restarts {x['engine_restarts']:.0f}; requests dropped from the engine's queue "
        f"unscored because their client had gone {x['dropped_unscored']:.0f}. During the swaps "
        f"{m['recommend']['unpersonalised']} answers were the flagged non-personalised ones "
        "(fail closed: the registry had moved on and the new adapter was still loading; they "
        "are fast, so they are many): the server was behind the registry for "
        f"{sum(m['behind_seconds']):.1f} s of the phase's {seconds:.0f} s, "
        f"{1000 * sum(m['behind_seconds']) / max(1, m['swaps']):.0f} ms a swap on average "
        "(activation to /ready naming the new version, under load).",
        "",
        f"Versions seen during the swaps: {', '.join(m['recommend']['versions'])}. Mean pause "
        f"of serving per swap (applying the adapter and its probes between two batches): "
        f"{mean_pause * 1000:.1f} ms.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}",
    ]
    (out / "load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = r["failed"] + f["failed"] + m["recommend"]["failed"] + m["forget"]["failed"]
    failed += x["other_5xx_or_errors"] + (x["health_after"] != 200) + (x["engine_restarts"] != 0)
    failed += x["patient_max_score_diff"] > 1e-3  # a patient answer changed under load
    if failed:
        raise SystemExit(f"{failed} requests failed")


if __name__ == "__main__":
    app()
