"""Does the LLM's P(like) rank a user's candidates better than the candidate stage already does?

For every test-period user with at least one liked test item (not seen before), these top-10
lists are compared on HR@10 and NDCG@10 of those liked items:
  (a) popularity among everyone before the test period (what the user has seen removed);
  (b) the candidate stage's own order (the service's co-occurrence index,
      ``service.serving.candidates``, built from every rating before the test period, as the
      service builds it from its database), 50 candidates;
  (c) the same 50 candidates reranked by each LLM's P(like) (prefix reuse, as served);
  (d) the same candidates ordered by P(rated) x P(like | rated): the candidate stage's score,
      normalised over the user's candidates, stands for the chance the user rates the item at
      all, and the LLM (trained on rated items only) for the chance they like it once rated.
      A test hit needs both, and no weight is tuned on the test users. With both periods,
      the weight on log P(like) is also fitted on the validation period's users and the
      fitted blend judged on the test period's.
Same users, same candidates, one run. Every user's candidates, stage scores, tiers, P(like)
and liked items go to scores.json, so another blend can be judged from it without the models
(``blend_hits``); a ``--saved`` model's P(like) is not copied there (it stays in its own run's).
``--period test --period valid`` measures both periods in one run (the validation period's users
are ones no model trained on either) and adds a pooled comparison over every (period, user) pair,
resampled by user: with some 60 users a period only differences of about 0.1 in HR@10 show.
Also reported: recall@50 of the candidates (the most any rerank can reach) and how far apart
the LLM's scores for one user's candidates are (a model whose scores differ in the fifth decimal
cannot order anything).

    python -m bench.ranking --data /tmp/e2urec-backbones/data \
        --model tiny=/tmp/e2urec-backbones/tiny \
        --model smollm2-135m=/tmp/e2urec-backbones/smollm2-135m --out bench/results/ranking-cpu

    # both periods, pooled; a model scored by an earlier run (same split, same candidates)
    python -m bench.ranking --data /tmp/rank4k/data --period test --period valid \
        --model tiny=/tmp/rank4k/tiny \
        --saved smollm2-135m@bench/results/ranking-ml1m-4k-blend-negatives-cpu --out /tmp/rank
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from scipy import sparse
from tqdm.auto import tqdm

from bench.common import command_line, machine
from e2urec.recommend import blended_order

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def hit_and_ndcg(ranked: list[int], relevant: set[int], k: int) -> tuple[float, float]:
    top = ranked[:k]
    hit = float(any(i in relevant for i in top))
    dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(top) if i in relevant)
    ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(relevant))))
    return hit, dcg / ideal if ideal else 0.0


def paired_difference(
    a: np.ndarray, b: np.ndarray, rounds: int = 5000, seed: int = 0
) -> dict[str, float]:
    """Mean of a - b over users with a 95% bootstrap interval (users resampled, pairs kept):
    with a few dozen users and a handful of hits per list, a difference of 0.05 in HR@10 can be
    chance, and the interval says whether it is."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(rounds, len(diff)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"mean": float(diff.mean()), "low": float(lo), "high": float(hi)}


def candidate_index(interactions, before: int):
    """The service's candidate index over every rating before ``before`` (no database)."""
    from service.serving.candidates import CandidateIndex

    rows = [x for x in interactions if x.timestamp < before]
    user_ids = np.array(sorted({x.user_id for x in rows}), dtype=np.int64)
    item_ids = np.array(sorted({x.item_id for x in rows}), dtype=np.int64)
    urow = {int(u): k for k, u in enumerate(user_ids)}
    icol = {int(i): k for k, i in enumerate(item_ids)}
    r = np.array([urow[x.user_id] for x in rows])
    c = np.array([icol[x.item_id] for x in rows])
    x = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (r, c)), shape=(len(user_ids), len(item_ids))
    )
    x.data[:] = 1.0
    seen: dict[int, set[int]] = {}
    for row in rows:
        seen.setdefault(row.user_id, set()).add(row.item_id)
    return CandidateIndex(user_ids, item_ids, x, 0, []), seen


def llm_scores(backbone, catalog, user: int, history, items: list[int]) -> np.ndarray:
    from e2urec.encoding import encode_shared_prefix
    from e2urec.scoring import predict_like, prefix_cached_like

    prompts = [catalog.prompt_for(user, history, i) for i in items]
    if backbone.is_seq2seq:
        return np.asarray(predict_like(backbone, prompts, batch_size=64))
    prefix, suffixes = encode_shared_prefix(
        backbone.tokenizer, backbone.format, prompts[0].prefix, [p.suffix for p in prompts]
    )
    return prefix_cached_like(
        backbone.model, backbone.format, [prefix], [suffixes], backbone.device
    )[0].numpy()


@app.command()
def main(
    data: Annotated[Path, typer.Option(help="prepared dataset the models were trained on")],
    model: Annotated[
        list[str] | None, typer.Option(help="NAME=PATH of a trained model (repeat)")
    ] = None,
    saved: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME@FOLDER: a model's P(like) from an earlier run's scores.json (its "
            "candidates must be these; repeat), to compare models that are not at hand"
        ),
    ] = None,
    *,
    out: Annotated[Path, typer.Option(help="folder for ranking.json and ranking.md")],
    candidates: int = 50,
    k: int = 10,
    max_users: Annotated[int, typer.Option(help="at most this many users a period (0 = all)")] = 0,
    period: Annotated[
        list[str] | None,
        typer.Option(
            help="test (default), or valid: the period before it, which the models never "
            "trained on either (other users and items: a second look at the same models); "
            "repeat for both, which adds a pooled comparison"
        ),
    ] = None,
) -> None:
    from e2urec.data import load_prepared, load_source
    from e2urec.model_store import load_model

    periods = period or ["test"]
    if not set(periods) <= {"test", "valid"} or len(set(periods)) < len(periods):
        raise typer.BadParameter(f"--period takes test and/or valid, once each; got {periods}")
    names, paths = [], []
    for spec in model or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_dir():
            raise typer.BadParameter(f"--model takes NAME=PATH of a trained model, got {spec!r}")
        names.append(name)
        paths.append(path)
    earlier = {name: folder for name, folder in map(parse_saved, saved or [])}
    if not names and not earlier:
        raise typer.BadParameter("give at least one --model NAME=PATH or --saved NAME@FOLDER")
    prepared = load_prepared(data)
    dataset = load_source(prepared.meta["source"])
    backbones = {n: load_model(p, device="cpu")[0] for n, p in zip(names, paths, strict=True)}
    scorers: dict[str, Scorer] = {
        n: partial(llm_scores, b, prepared.catalog) for n, b in backbones.items()
    }
    per_user, results, kept_scores, folders = {}, {}, {}, {}
    for name in periods:
        evaluated = prepared.splits.named(name)
        index, seen = candidate_index(dataset.interactions, min(s.timestamp for s in evaluated))
        users = period_users(evaluated, seen, max_users)
        folder = out if name == periods[0] else out / f"{name}-period"
        for model_name, run in earlier.items():
            at = run if name == periods[0] else run / f"{name}-period"
            scorers[f"{model_name}{SAVED}"] = SavedScores(at / "scores.json", model_name)
        result, per_user[name], kept = evaluate(index, seen, users, scorers, candidates, k)
        result.update(period=name, data=str(data), command=command_line(), machine=machine())
        results[name], kept_scores[name], folders[name] = result, kept, folder
    if {"valid", "test"} <= set(periods):
        # One weight per model, chosen on the validation period's users and judged on the test
        # period's: the plain product (weight 1) is a guess, not a fit.
        for model_name in [
            n.removeprefix("P(like): ") for n in kept_scores["valid"] if n.startswith("P(like): ")
        ]:
            weight, curve = fit_blend_weight(kept_scores["valid"], model_name, k)
            method = f"LLM x candidate stage, weight {weight:g} fitted on valid: {model_name}"
            hr, ndcg = blend_hits(kept_scores["test"], model_name, weight, k)
            add_row(results["test"], per_user["test"], method, hr, ndcg)
            results["test"].setdefault("fitted_blend", {})[model_name] = {
                "weight": weight,
                "valid_ndcg_by_weight": curve,
            }
    for name in periods:
        folder, result = folders[name], results[name]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ranking.json").write_text(json.dumps(result, indent=2))
        (folder / "ranking.md").write_text(render(result))
        (folder / "scores.json").write_text(json.dumps(own_scores(kept_scores[name])))
        print(render(result))
    if len(periods) > 1:
        pooled = pooled_versus(per_user, k)
        (out / "pooled.json").write_text(json.dumps(pooled, indent=2))
        (out / "pooled.md").write_text(render_pooled(pooled, command_line()))
        print(render_pooled(pooled, command_line()))


SAVED = " (saved)"  # what a --saved model's name carries in this run's tables


def own_scores(kept: dict) -> dict:
    """A period's scores to write: what this run measured. A --saved model's P(like) stays in
    the earlier run's scores.json, which the tables name; a copy here would be a second source
    for the same numbers (the fitted blends still read them, in memory)."""
    return {k: v for k, v in kept.items() if not (k.startswith("P(like): ") and k.endswith(SAVED))}


def period_users(evaluated, seen: dict[int, set[int]], max_users: int) -> list:
    """(user, history, liked items) for the period's users with at least one liked item they
    had not seen before the period; the history is that of their first sample in it."""
    first: dict[int, object] = {}
    liked: dict[int, set[int]] = {}
    for s in sorted(evaluated, key=lambda s: s.timestamp):
        first.setdefault(s.user_id, s)
        if s.label == 1:
            liked.setdefault(s.user_id, set()).add(s.item_id)
    users = []
    for user, items in sorted(liked.items()):
        relevant = items - seen.get(user, set())
        history = first[user].history
        if relevant and history and user in seen:
            users.append((user, history, relevant))
    return users[:max_users] if max_users else users


def parse_saved(spec: str) -> tuple[str, Path]:
    name, sep, folder = spec.partition("@")
    if not sep or not name or not (Path(folder) / "scores.json").is_file():
        raise typer.BadParameter(
            f"--saved takes NAME@FOLDER, a folder with an earlier run's scores.json, got {spec!r}"
        )
    return name, Path(folder)


Scorer = Callable[[int, tuple, list[int]], np.ndarray]


class SavedScores:
    """A model's P(like) for each user's candidates as an earlier run saved them. Refuses a user
    whose candidates differ from this run's: the scores would belong to another list."""

    def __init__(self, path: Path, model: str):
        if not path.is_file():
            raise typer.BadParameter(
                f"{path} is missing: the earlier run did not cover this period"
            )
        saved = json.loads(path.read_text())
        key = f"P(like): {model}"
        if key not in saved:
            models = [m.removeprefix("P(like): ") for m in saved if m.startswith("P(like): ")]
            raise typer.BadParameter(f"{path} has no scores for {model!r}; it has {models}")
        self._pools, self._scores, self._path = saved["candidates"], saved[key], path

    def __call__(self, user: int, history: tuple, pool: list[int]) -> np.ndarray:
        if self._pools.get(str(user)) != list(pool):
            raise typer.BadParameter(
                f"{self._path}: user {user}'s candidates differ from this run's (another split "
                "or candidate stage); rescore the model with --model instead"
            )
        return np.asarray(self._scores[str(user)])


def evaluate(index, seen, users: list, scorers: dict[str, Scorer], candidates: int, k: int):
    """Every ranking of one period's users: (result, per-user hits and NDCG, saved scores)."""
    lists: dict[str, dict[int, list[int]]] = {"popularity": {}, "candidate stage": {}}
    pools: dict[int, list[int]] = {}
    stage_scores: dict[int, np.ndarray] = {}
    tiers: dict[int, list[int]] = {}
    for user, history, _ in users:
        lists["popularity"][user] = [c.item_id for c in index.for_user([], seen[user], k)]
        recent = [i for i, _ in history]
        found = index.for_user(recent, seen[user], candidates)
        pools[user] = [c.item_id for c in found]
        stage_scores[user] = np.array([c.score for c in found])
        tiers[user] = [c.tier for c in found]
        lists["candidate stage"][user] = pools[user]
    saved: dict[str, dict] = {
        "candidates": {u: pools[u] for u in pools},
        "candidate stage": {u: stage_scores[u].tolist() for u in pools},
        "tiers": {u: tiers[u] for u in pools},  # 0 co-occurrence, 1 popularity top-up
        "relevant": {u: sorted(rel) for u, _, rel in users},
    }
    spreads: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for name, score in scorers.items():
        ranked, blended, spread, kept = {}, {}, [], {}
        started = time.perf_counter()
        for user, history, _ in tqdm(users, desc=f"reranking with {name}", leave=False):
            scores = score(user, history, pools[user])
            ranked[user] = ordered(pools[user], scores)
            blend = blended_order(stage_scores[user], scores, tiers[user])  # as /recommend does
            blended[user] = [pools[user][j] for j in blend]
            spread.append(float(np.std(scores)))
            kept[user] = [float(x) for x in scores]
        if not isinstance(score, SavedScores):
            seconds[name] = time.perf_counter() - started
        lists[f"LLM rerank: {name}"] = ranked
        lists[f"LLM x candidate stage: {name}"] = blended
        spreads[name] = float(np.median(spread))
        saved[f"P(like): {name}"] = kept
    rows, per_user = {}, {}
    for method, by_user in lists.items():
        hits, ndcgs = zip(*(hit_and_ndcg(by_user[u], rel, k) for u, _, rel in users), strict=True)
        per_user[method] = {"user": [u for u, _, _ in users], "hr": hits, "ndcg": ndcgs}
        rows[method] = {"hr": float(np.mean(hits)), "ndcg": float(np.mean(ndcgs))}
    # Does each rerank beat the order it reranks? Paired over the same users.
    versus = {
        method: {
            metric: paired_difference(per_user[method][metric], per_user["candidate stage"][metric])
            for metric in ("hr", "ndcg")
        }
        for method in lists
        if method.startswith("LLM")
    }
    recall = float(np.mean([len(set(pools[u]) & rel) / len(rel) for u, _, rel in users]))
    result = {
        "users": len(users),
        "candidates": candidates,
        "k": k,
        "rows": rows,
        "rerank_vs_candidate_stage": versus,
        "candidate_recall": recall,
        "score_spread_median": spreads,
        "rerank_seconds": seconds,
    }
    return result, per_user, saved


BLEND_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def blend_hits(saved: dict, model: str, weight: float, k: int) -> tuple[list[float], list[float]]:
    """HR@k and NDCG@k per user (in ``saved``'s user order) of the blend with ``weight`` on
    log P(like), from a period's saved scores: no model needed."""
    like = saved[f"P(like): {model}"]
    hits, ndcgs = [], []
    for user, pool in saved["candidates"].items():
        order = blended_order(
            saved["candidate stage"][user], like[user], saved["tiers"][user], weight
        )
        hit, ndcg = hit_and_ndcg([pool[j] for j in order], set(saved["relevant"][user]), k)
        hits.append(hit)
        ndcgs.append(ndcg)
    return hits, ndcgs


def fit_blend_weight(
    saved: dict, model: str, k: int, grid: tuple[float, ...] = BLEND_WEIGHTS
) -> tuple[float, dict[str, float]]:
    """The weight on log P(like) whose blend has the highest mean NDCG@k over one period's
    users, and the mean NDCG@k at every weight of ``grid`` (ties: the weight nearest 1, the
    plain product). Weight 0 is the candidate order itself, so the fit may reject the LLM."""
    curve = {w: float(np.mean(blend_hits(saved, model, w, k)[1])) for w in grid}
    best = max(grid, key=lambda w: (curve[w], -abs(math.log2(w)) if w else -math.inf))
    return best, {f"{w:g}": v for w, v in curve.items()}


def add_row(result: dict, per_user: dict, method: str, hr: list[float], ndcg: list[float]) -> None:
    """One more ranking of the same users, with its difference from the candidate order."""
    per_user[method] = {"user": per_user["candidate stage"]["user"], "hr": hr, "ndcg": ndcg}
    result["rows"][method] = {"hr": float(np.mean(hr)), "ndcg": float(np.mean(ndcg))}
    result["rerank_vs_candidate_stage"][method] = {
        metric: paired_difference(per_user[method][metric], per_user["candidate stage"][metric])
        for metric in ("hr", "ndcg")
    }


def clustered_difference(
    a: np.ndarray, b: np.ndarray, cluster: list, rounds: int = 5000, seed: int = 0
) -> dict[str, float]:
    """Mean of a - b over rows with a 95% bootstrap interval that resamples whole clusters: a
    user who appears in two periods is one draw, not two independent ones."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    keys = sorted(set(cluster))
    at = {c: k for k, c in enumerate(keys)}
    member = np.array([at[c] for c in cluster])
    sums = np.bincount(member, weights=diff, minlength=len(keys))
    sizes = np.bincount(member, minlength=len(keys)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), size=(rounds, len(keys)))
    means = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"mean": float(diff.mean()), "low": float(lo), "high": float(hi)}


def pooled_versus(per_user: dict[str, dict], k: int) -> dict:
    """Each rerank against the candidate order over every period's users at once."""
    periods = list(per_user)
    # every period's rankings (a blend weight fitted on valid is judged on test alone)
    methods = [
        m
        for m in per_user[periods[0]]
        if m.startswith("LLM") and all(m in per_user[p] for p in periods)
    ]
    users = [u for p in periods for u in per_user[p]["candidate stage"]["user"]]
    out: dict = {"periods": periods, "rows": len(users), "users": len(set(users)), "k": k}
    out["rerank_vs_candidate_stage"] = {
        m: {
            metric: clustered_difference(
                np.concatenate([per_user[p][m][metric] for p in periods]),
                np.concatenate([per_user[p]["candidate stage"][metric] for p in periods]),
                users,
            )
            for metric in ("hr", "ndcg")
        }
        for m in methods
    }
    return out


def render_pooled(r: dict, command: str) -> str:
    k = r["k"]
    lines = [
        f"# Rerank minus the candidate order, {' and '.join(r['periods'])} periods pooled",
        "",
        f"{r['rows']} (period, user) pairs from {r['users']} distinct users; 95% bootstrap "
        "intervals resample users (a user in both periods counts once):",
        "",
        *versus_table(r["rerank_vs_candidate_stage"], k),
    ]
    return "\n".join([*lines, "", f"Command: `{command}`", ""])


def versus_table(versus: dict[str, dict], k: int) -> list[str]:
    """Markdown rows: each rerank minus the candidate order, with intervals and the verdict."""
    lines = [
        f"| rerank | HR@{k} difference | NDCG@{k} difference | beats the candidate order |",
        "|---|---|---|---|",
    ]
    for method, d in versus.items():
        cells = [
            f"{d[m]['mean']:+.4f} [{d[m]['low']:+.4f}, {d[m]['high']:+.4f}]" for m in ("hr", "ndcg")
        ]
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {verdict(d)} |")
    return lines


def ordered(pool: list[int], scores: np.ndarray) -> list[int]:
    """``pool`` by descending score; ties keep the candidate stage's order."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))
    return [pool[j] for j in order]


def verdict(d: dict[str, dict[str, float]]) -> str:
    """'yes' only when both metrics' intervals lie above 0."""
    above = [m.upper() for m in ("hr", "ndcg") if d[m]["low"] > 0]
    below = [m.upper() for m in ("hr", "ndcg") if d[m]["high"] < 0]
    if len(above) == 2:
        return "yes"
    said = [f"better on {a}" for a in above] + [f"worse on {b}" for b in below]
    return ", ".join(said) or "not beyond chance"


def render(r: dict) -> str:
    k, period = r["k"], r.get("period", "test")
    lines = [
        f"# Ranking: HR@{k} and NDCG@{k} of each {period}-period user's liked items",
        "",
        f"{r['users']} {period}-period users with at least one liked, not yet seen {period} "
        f"item; {r['candidates']} candidates per user from the service's co-occurrence index "
        f"built on every rating before the {period} period. Recall of the liked items within the "
        f"{r['candidates']} candidates (the ceiling of any rerank): "
        f"{r['candidate_recall']:.3f}.",
        "",
        f"| ranking | HR@{k} | NDCG@{k} |",
        "|---|---|---|",
    ]
    for method, row in r["rows"].items():
        lines.append(f"| {method} | {row['hr']:.4f} | {row['ndcg']:.4f} |")
    if r.get("rerank_vs_candidate_stage"):
        lines += [
            "",
            "Rerank minus the candidate stage's order, per user, mean and 95% bootstrap interval "
            "(users resampled; an interval above 0 is a win beyond chance):",
            "",
            *versus_table(r["rerank_vs_candidate_stage"], k),
        ]
    for model_name, fit in r.get("fitted_blend", {}).items():
        curve = ", ".join(f"{w}: {v:.4f}" for w, v in fit["valid_ndcg_by_weight"].items())
        lines += [
            "",
            f"Blend weight for {model_name}, fitted on the validation period's users (mean "
            f"NDCG@{k} by weight on log P(like); 0 is the candidate order): {curve}. "
            f"Chosen: {fit['weight']:g} (to serve it: `E2UREC_LIKE_WEIGHT={fit['weight']:g}`).",
        ]
    lines += ["", "Median standard deviation of one user's candidate scores, and rerank time:", ""]
    for name, spread in r["score_spread_median"].items():
        took = r["rerank_seconds"].get(name)
        when = f"{took:.0f} s in all" if took is not None else "scores from an earlier run"
        lines.append(f"- {name}: {spread:.2e} ({when})")
    lines += ["", f"Command: `{r['command']}`", "", f"Machine: {r['machine']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    app()
