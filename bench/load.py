"""Load on loopback: ``/recommend`` throughput and latency, ``POST /forget`` intake with
PostgreSQL, and both at once while adapters are hot-swapped. Zero failed requests is the bar.

The API runs as its own process (``e2urec-service serve``) on a fresh PostgreSQL database with
a synthetic catalogue and a tiny base; the load comes from an asyncio HTTP client in this
process. During the mixed phase the active adapter changes every few seconds (registry update
plus Redis notice), exactly as the worker publishes one. Writes ``load.json`` and ``load.md``.

    python bench/load.py --out bench/results/load-cpu
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated

import httpx
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import clean_env, machine, start_api, stop  # noqa: E402
from tests.service_support import (  # noqa: E402  (dev helpers shared with the tests)
    KEYS,
    make_settings,
    postgres_database,
    prepare_database,
    random_adapter,
    small_dataset,
    tiny_base_folder,
)

ADMIN = next(k for k, scopes in KEYS.items() if "admin" in scopes)
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
    deadline = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient, k: int) -> None:
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

    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(
        base_url=url, timeout=60, headers=headers, limits=httpx.Limits(max_connections=concurrency)
    ) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client(c, k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summary(lat, failed, elapsed, concurrency, versions=sorted(versions))


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


def swapper(settings, versions: list[int], every: float, stop: threading.Event, log: list):
    """Activate the adapters in turn, as the worker does (registry, then notice)."""
    from service.db.models import AdapterVersion
    from service.db.session import session_scope
    from service.model_sync import publish_model_change
    from service.registry import activate_adapter

    k = 0
    while not stop.wait(every):
        version = versions[k % len(versions)]
        k += 1
        with session_scope(settings.db_url) as s:
            activate_adapter(s, s.get(AdapterVersion, version), actor="load-test")
        publish_model_change(settings, str(version))
        log.append((time.perf_counter(), version))


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="results folder")],
    seconds: Annotated[float, typer.Option(help="length of each phase")] = 20.0,
    concurrency: int = 16,
    users: int = 1000,
    port: int = 8767,
    redis_url: str = "redis://127.0.0.1:6379/0",
) -> None:
    from e2urec.adapter_files import read_adapter
    from service.db.models import AdapterStatus, AdapterVersion
    from service.db.session import session_scope

    work = ROOT / "runs" / f"bench-load-{uuid.uuid4().hex[:6]}"
    dataset = small_dataset(users=users, items=400, per_user=20, seed=4)
    base = tiny_base_folder(dataset, work / "base")
    results: dict = {}
    with postgres_database() as url:
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
                target=swapper, args=(settings, versions, seconds / 5, done, swaps)
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
            results["during_swaps"] = {"recommend": rec, "forget": fg, "swaps": len(swaps)}
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
    command = "python " + " ".join(sys.argv)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps({"command": command, **results}, indent=2))
    r, f, m = results["recommend"], results["forget"], results["during_swaps"]
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
    if failed:
        raise SystemExit(f"{failed} requests failed")


if __name__ == "__main__":
    app()
