"""``/recommend`` latency and throughput through a real server, engine settings side by side.

For each configuration (dynamic batching on/off x prefix reuse on/off) it starts
``e2urec-service serve`` as its own process on the same SQLite catalogue and base model, drives
it with concurrent HTTP clients for a fixed time, and records requests/s, candidates/s and
latency percentiles. Writes ``serving.json`` and ``serving.md`` to ``--out``.

    python -m bench.serving --out bench/results/serving-cpu
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from bench.common import clean_env, command_line, machine, start_api, stop, stop_cleanly_on_sigterm

KEY = "bench-key-0123456789abcdef"
CONFIGS = {
    "batching + prefix reuse": {"E2UREC_BATCHING": "true", "E2UREC_PREFIX_REUSE": "true"},
    "batching, full prompts": {"E2UREC_BATCHING": "true", "E2UREC_PREFIX_REUSE": "false"},
    "one request at a time + prefix reuse": {
        "E2UREC_BATCHING": "false",
        "E2UREC_PREFIX_REUSE": "true",
    },
    "one request at a time, full prompts": {
        "E2UREC_BATCHING": "false",
        "E2UREC_PREFIX_REUSE": "false",
    },
}

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def prepare(data_dir: Path, users: int, items: int, backbone: str = "tiny") -> None:
    """A synthetic catalogue and an untrained base (``tiny``) or the pretrained one as it comes:
    speed does not depend on the weights' values."""
    from e2urec.data import Catalog, SampleConfig, SyntheticConfig, generate_synthetic, make_splits
    from e2urec.model_store import save_model
    from e2urec.pipeline import load_base
    from service.cli import migrate_database
    from service.core.db.session import session_scope
    from service.domain.importer import import_dataset
    from service.domain.registry import register_base

    url = f"sqlite:///{data_dir / 'e2urec.db'}"
    if (data_dir / "e2urec.db").exists():
        return
    dataset = generate_synthetic(
        SyntheticConfig(users=users, items=items, ratings_per_user=40, seed=1)
    )
    catalog = Catalog.of(dataset)
    splits = make_splits(dataset, SampleConfig(max_samples=None, forget_fraction=0.0))
    base = load_base(backbone, catalog, splits.train, device="cpu", seed=0)
    save_model(base, data_dir / "models" / "base", {"kind": "bench-base"}, overwrite=True)
    migrate_database(url)
    with session_scope(url) as session:
        import_dataset(session, dataset, {"format": "synthetic"})
    with session_scope(url) as session:
        register_base(session, data_dir / "models" / "base", actor="bench")


async def drive(url: str, users: list[str], k: int, concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    rng = random.Random(0)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            r = await c.get(
                "/recommend",
                params={"user_id": rng.choice(users), "k": k},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            if r.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.mean(latencies) * 1000,
    }


def start_server(
    data_dir: Path, port: int, env_extra: dict[str, str], pool: int
) -> subprocess.Popen:
    env = clean_env(
        E2UREC_DATA_DIR=str(data_dir),
        E2UREC_API_KEYS=f"{KEY}:recommend",
        E2UREC_REDIS_URL="",
        E2UREC_CANDIDATE_POOL=str(pool),
        # a 135M model scoring full prompts for 8 clients queues for minutes: measure, not 503
        E2UREC_SCORE_TIMEOUT_SECONDS="900",
        **env_extra,
    )
    return start_api(port, env)


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="results folder")],
    work: Annotated[
        Path | None, typer.Option(help="scratch folder (default runs/bench-serving-BACKBONE)")
    ] = None,
    backbone: Annotated[str, typer.Option(help="tiny, smollm2-135m, ...")] = "tiny",
    users: Annotated[int, typer.Option(help="synthetic users (and 4/3 as many items)")] = 300,
    seconds: Annotated[float, typer.Option(help="measured seconds per configuration")] = 20.0,
    concurrency: Annotated[list[int] | None, typer.Option(help="concurrent clients")] = None,
    pool: Annotated[int, typer.Option(help="candidates the LLM scores per request")] = 50,
    k: int = 10,
    port: int = 8765,
) -> None:
    stop_cleanly_on_sigterm()
    levels = concurrency or [1, 8]
    work = work or Path(f"runs/bench-serving-{backbone}")
    prepare(work, users=users, items=users * 4 // 3, backbone=backbone)
    user_ids = [str(u) for u in range(1, users + 1)]
    results: dict[str, list[dict]] = {}
    for name, env_extra in CONFIGS.items():
        proc = start_server(work, port, env_extra, pool)
        try:
            asyncio.run(drive(f"http://127.0.0.1:{port}", user_ids, k, 4, 3.0))  # warm-up
            results[name] = []
            for c in levels:
                r = asyncio.run(drive(f"http://127.0.0.1:{port}", user_ids, k, c, seconds))
                r["candidates_per_s"] = r["rps"] * pool
                results[name].append(r)
                print(
                    f"{name}, {c} clients: {r['rps']:.1f} req/s, p50 {r['p50_ms']:.0f} ms, "
                    f"p99 {r['p99_ms']:.0f} ms, {r['errors']} errors",
                    flush=True,
                )
        finally:
            stop(proc)
    command = command_line()
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(
        json.dumps({"command": command, "backbone": backbone, "results": results}, indent=2)
    )
    lines = [
        f"`/recommend` through uvicorn on loopback, backbone `{backbone}`: {pool} candidates "
        "scored by the LLM per "
        f"request, top {k} returned; {seconds:.0f} s per cell after a 3 s warm-up; the load "
        "generator shares the machine.",
        "",
        "| engine | clients | requests | req/s | candidates/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['concurrency']} | {r['requests']} | {r['rps']:.2f} | "
                f"{r['candidates_per_s']:.0f} | "
                f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |"
            )
    base = {r["concurrency"]: r["rps"] for r in results["one request at a time, full prompts"]}
    lines += ["", "Speed-up in req/s over one request at a time with full prompts:", ""]
    for name, rows in results.items():
        gains = ", ".join(
            f"{r['rps'] / base[r['concurrency']]:.2f}x at {r['concurrency']}" for r in rows
        )
        lines.append(f"- {name}: {gains}")
    lines += [
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}",
    ]
    (out / "serving.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app()
