"""What `/recommend`'s scoring pass costs, and what each of its choices buys: prefix reuse with the
LM head at every suffix position (right-padded suffixes, the code before 2026-12-03) against the
head at the answer only (left-padded suffixes, today's), and bfloat16 autocast, for one request
at a time and for 8 users' requests in one batch (what the engine's dynamic batching runs).

No server and no database: the engine's own call (``e2urec.scoring``) on requests of 50
candidates built from the dataset's prompts, timed in one process, side by side. Useful
GFLOP/s counts the prefix once and each suffix's tokens with the head at its answer only
(``bench.flops.prefix_reuse_flops``), so wasted work shows as a lower rate.

    python -m bench.prefix_scoring --backbone smollm2-135m --path ../shared/data/ml-1m \\
        --ratings-file ratings.users_1-2999.partial.dat --out bench/results/prefix-scoring-cpu
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from scipy.stats import spearmanr

from bench.common import command_line, machine
from bench.flops import ModelShape, prefix_reuse_flops
from bench.llm_speed import matmul_peak

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

Request = tuple[list[int], list[list[int]]]  # a user's prefix ids, its candidates' suffix ids
CANDIDATES = 50  # per request, as /recommend scores them


def head_everywhere_logits(model, fmt, prefixes, suffixes, device) -> torch.Tensor:
    """The previous implementation, kept here only to measure against: suffixes right-padded,
    so each answer sits at a different position and the LM head runs at all of them."""
    from e2urec.encoding import collate

    counts = [len(s) for s in suffixes]
    p_batch = collate(fmt, prefixes).to(device)
    out = model(
        input_ids=p_batch.input_ids,
        attention_mask=p_batch.attention_mask,
        position_ids=p_batch.position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = out.cache
    rows = torch.tensor([b for b, n in enumerate(counts) for _ in range(n)], device=device)
    cache.batch_select_indices(rows)
    flat = [s for group in suffixes for s in group]
    width = max(map(len, flat))
    ids = torch.full((len(flat), width), fmt.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(flat):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    prefix_len = p_batch.attention_mask.sum(-1)[rows]
    out = model(
        input_ids=ids.to(device),
        attention_mask=torch.cat([p_batch.attention_mask[rows], mask.to(device)], dim=1),
        position_ids=prefix_len[:, None] + torch.arange(width, device=device),
        cache=cache,
        use_cache=True,
        logits_to_keep=width,
    )
    last = mask.sum(-1) - 1
    return out.logits[torch.arange(len(flat)), last.to(device)]


def build_requests(
    backbone: str, path: Path | None, ratings_file: str | None, count: int, seed: int
):
    """The backbone (``tiny`` trains its tokenizer on the catalogue) and ``count`` users'
    requests of 50 candidates: each a test sample's prompt prefix (profile and history) with 50
    catalogue items drawn at random, as the candidate stage would hand over."""
    from e2urec.backbones import load_backbone
    from e2urec.data import Catalog, SampleConfig, SyntheticConfig, load_dataset, make_splits
    from e2urec.encoding import encode_shared_prefix

    name = "auto" if path else "synthetic"
    dataset = load_dataset(name, path, ratings_file=ratings_file, synthetic=SyntheticConfig())
    splits = make_splits(dataset, SampleConfig(max_samples=5_000, seed=seed))
    catalog = Catalog.of(dataset)
    corpus = catalog.texts() + [catalog.prompt(s).text for s in splits.train]
    bb = load_backbone(backbone, corpus=corpus, device="cpu")
    bb.model.eval()
    rng = random.Random(seed)
    last = {s.user_id: s for s in splits.test}
    users = rng.sample(sorted(last), count)
    items = sorted(catalog.items)
    requests: list[Request] = []
    for user in users:
        drawn = rng.sample(items, CANDIDATES)
        prompts = [catalog.prompt_for(user, last[user].history, i) for i in drawn]
        requests.append(
            encode_shared_prefix(
                bb.tokenizer, bb.format, prompts[0].prefix, [p.suffix for p in prompts]
            )
        )
    return bb, requests, dataset.name


def time_variant(
    logits_of: Callable, bb, requests: Sequence[Request], per_batch: int, bf16: bool
) -> tuple[float, torch.Tensor]:
    """Seconds for all requests, ``per_batch`` users a pass, and P(yes) of every candidate."""
    from e2urec.scoring import yes_probability

    fmt, model = bb.format, bb.model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    groups = [requests[i : i + per_batch] for i in range(0, len(requests), per_batch)]
    scores = []
    with torch.inference_mode(), autocast:
        first = groups[0][:1]  # warm-up: allocator and kernels
        logits_of(model, fmt, [r[0] for r in first], [r[1] for r in first], bb.device)
        started = time.perf_counter()
        for g in groups:
            logits = logits_of(model, fmt, [r[0] for r in g], [r[1] for r in g], bb.device)
            scores.append(yes_probability(logits, fmt).cpu())
        seconds = time.perf_counter() - started
    return seconds, torch.cat(scores)


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="folder for prefix_scoring.json and .md")],
    backbone: str = "smollm2-135m",
    path: Annotated[Path | None, typer.Option(help="ML-1M folder (else synthetic)")] = None,
    ratings_file: str | None = None,
    users: Annotated[int, typer.Option(help="requests timed per cell")] = 8,
    seed: int = 0,
) -> None:
    from e2urec.scoring import prefix_answer_logits

    out.mkdir(parents=True, exist_ok=True)
    peak = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    bb, requests, dataset = build_requests(backbone, path, ratings_file, users, seed)
    shape = ModelShape.of(bb.model, backbone)
    useful = sum(
        prefix_reuse_flops(shape, len(p), float(np.mean([len(t) for t in s])), len(s))
        for p, s in requests
    )
    variants = [
        ("head at every suffix position (before)", head_everywhere_logits, False),
        ("head at the answer only (now)", prefix_answer_logits, False),
        ("head at the answer only + bfloat16 autocast", prefix_answer_logits, True),
    ]

    def per_request(i: int) -> slice:  # request i's rows in a variant's scores
        return slice(i * CANDIDATES, (i + 1) * CANDIDATES)

    rows, reference = [], None
    for per_batch in (1, users):
        for name, fn, bf16 in variants:
            seconds, p = time_variant(fn, bb, requests, per_batch, bf16)
            if reference is None:
                reference = p  # float32, one request at a time: what the others must match
            dtype = "bfloat16" if bf16 else "float32"
            agreement = [
                spearmanr(reference[per_request(i)], p[per_request(i)]).statistic
                for i in range(len(requests))
            ]
            row = {
                "variant": name,
                "users_per_pass": per_batch,
                "seconds_per_request": seconds / len(requests),
                "candidates_per_s": CANDIDATES * len(requests) / seconds,
                "gflops_per_s": useful / seconds / 1e9,
                "share_of_matmul_peak": useful / seconds / peak[dtype],
                "max_abs_p_difference": float((p - reference).abs().max()),
                "median_rank_agreement": float(np.median(agreement)),
            }
            rows.append(row)
            print(
                f"{per_batch} user(s) a pass, {name}: {row['seconds_per_request']:.2f} s/request,"
                f" max |dP| {row['max_abs_p_difference']:.1e}",
                flush=True,
            )
    spread = [float(reference[per_request(i)].std()) for i in range(len(requests))]
    result = {
        "backbone": backbone,
        "dataset": dataset,
        "requests": len(requests),
        "candidates": CANDIDATES,
        "mean_prefix_tokens": float(np.mean([len(p) for p, _ in requests])),
        "mean_suffix_tokens": float(np.mean([len(t) for _, s in requests for t in s])),
        "max_suffix_tokens": max(len(t) for _, s in requests for t in s),
        "median_score_spread": float(np.median(spread)),
        "threads": torch.get_num_threads(),
        "matmul_peak_gflops": {k: v / 1e9 for k, v in peak.items()},
        "rows": rows,
        "command": command_line(),
        "machine": machine(),
    }
    (out / "prefix_scoring.json").write_text(json.dumps(result, indent=2))
    (out / "prefix_scoring.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    base = {row["users_per_pass"]: row for row in r["rows"] if "before" in row["variant"]}
    lines = [
        f"# Scoring a `/recommend` request: {r['backbone']} on {r['dataset']}",
        "",
        f"{r['requests']} users' requests of {r['candidates']} candidates each, scored with "
        f"prefix reuse (the user's prompt once, each candidate after it through the KV cache); "
        f"mean prefix {r['mean_prefix_tokens']:.0f} tokens, suffix {r['mean_suffix_tokens']:.1f} "
        f"(longest {r['max_suffix_tokens']}). {r['threads']} threads; matmul peak here: float32 "
        f"{r['matmul_peak_gflops']['float32']:.0f}, bfloat16 "
        f"{r['matmul_peak_gflops']['bfloat16']:.0f} GFLOP/s. Useful GFLOP/s counts the prefix "
        "once and the LM head at each answer only.",
        "",
        "| users a pass | variant | s / request | candidates / s | speed-up | GFLOP/s | of matmul "
        "peak | max abs P difference | median rank agreement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        speedup = base[row["users_per_pass"]]["seconds_per_request"] / row["seconds_per_request"]
        lines.append(
            f"| {row['users_per_pass']} | {row['variant']} | {row['seconds_per_request']:.3g} | "
            f"{row['candidates_per_s']:.1f} | {speedup:.2f}x | {row['gflops_per_s']:.0f} | "
            f"{row['share_of_matmul_peak']:.0%} | {row['max_abs_p_difference']:.1e} | "
            f"{row['median_rank_agreement']:.3f} |"
        )
    lines += [
        "",
        "P differences and rank agreement (Spearman within a request, median over requests) are "
        "against the first row. The median standard deviation of one request's "
        f"{r['candidates']} scores is {r['median_score_spread']:.3f}: differences of that size "
        "reorder candidates.",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Machine: {r['machine']}",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    app()
