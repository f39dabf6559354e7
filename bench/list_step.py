"""What one candidate list costs to train on, with the user's prompt read once or per candidate.

``e2urec train --lists`` adds a listwise loss over candidate lists (``e2urec.listwise``). A
causal model reads the user's prompt once per list and each candidate's few tokens after it
through the KV cache; the alternative is one full prompt per candidate. This times a forward
and backward pass of the same lists both ways, on the backbone's training recipe (a pretrained
LLM: the merged-LoRA recipe's LoRA, on every linear layer), checks that both give the same loss,
and sets a pointwise step of the recipe's batch beside them.

    python -m bench.list_step --data /tmp/r30/data --backbone smollm2-135m \
        --out bench/results/list-step-cpu
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from bench.common import command_line, machine

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def timed(step) -> tuple[float, float]:
    """(seconds, loss) of one forward and backward pass."""
    started = time.perf_counter()
    loss = step()
    loss.backward()
    return time.perf_counter() - started, float(loss.detach())


@app.command()
def main(
    data: Annotated[Path, typer.Option(help="prepared dataset (lists come from its train split)")],
    out: Annotated[Path, typer.Option(help="folder for list_step.json and list_step.md")],
    backbone: str = "tiny",
    lists: Annotated[int, typer.Option(help="lists to time, one at a time")] = 4,
    list_size: int = 20,
    threads: Annotated[int, typer.Option(help="torch threads (0 = leave as is)")] = 0,
) -> None:
    from e2urec.data import load_prepared
    from e2urec.data.lists import candidate_lists
    from e2urec.encoding import answer_logits, answer_loss, collate, encode_prompts
    from e2urec.listwise import encode_lists, list_answer_logits, list_loss
    from e2urec.pipeline import load_base
    from e2urec.training import autocast, recipe_for, with_lora

    if threads:
        torch.set_num_threads(threads)
    prepared = load_prepared(data)
    train, catalog = prepared.splits.trained, prepared.catalog
    cfg = recipe_for(backbone).config()
    bb = load_base(backbone, catalog, train, device="cpu", seed=0)
    if cfg.lora:
        bb.model = with_lora(bb.model, cfg)
    model, fmt, tok = bb.model, bb.format, bb.tokenizer
    chosen = candidate_lists(train, 1.0, seed=0, list_size=list_size)[:lists]
    if len(chosen) < lists:
        raise typer.BadParameter(f"{data}'s train split gives only {len(chosen)} lists")
    shared = encode_lists(tok, fmt, catalog, chosen)
    full = [
        encode_prompts(tok, fmt, [catalog.prompt_for(x.user_id, x.history, i) for i in x.items])
        for x in chosen
    ]
    points = encode_prompts(tok, fmt, [catalog.prompt(s) for s in train[: cfg.batch_size]])
    labels = torch.tensor([s.label for s in train[: cfg.batch_size]])
    model.train()
    rows = []
    for k, (lst, prompts) in enumerate(zip(shared, full, strict=True)):
        with autocast(bb.device, cfg.bf16):

            def once(lst=lst):
                return list_loss(list_answer_logits(model, fmt, [lst], bb.device), fmt, [lst])

            def per_candidate(lst=lst, prompts=prompts):
                logits = answer_logits(model, collate(fmt, prompts).to(bb.device))
                return list_loss(logits, fmt, [lst])

            if k == 0:  # warm-up: first calls allocate
                timed(once)
                timed(per_candidate)
            t_once, loss_once = timed(once)
            t_full, loss_full = timed(per_candidate)
        model.zero_grad(set_to_none=True)
        rows.append(
            {
                "prefix_tokens": len(lst.prefix),
                "candidates": len(lst.suffixes),
                "suffix_tokens": sum(map(len, lst.suffixes)),
                "full_prompt_tokens": sum(map(len, prompts)),
                "seconds_prefix_once": t_once,
                "seconds_full_prompts": t_full,
                "loss_prefix_once": loss_once,
                "loss_full_prompts": loss_full,
            }
        )
    with autocast(bb.device, cfg.bf16):
        batch = collate(fmt, points).to(bb.device)
        timed(lambda: answer_loss(model, fmt, batch, labels)[0])
        t_point, _ = timed(lambda: answer_loss(model, fmt, batch, labels)[0])
    result = {
        "backbone": backbone,
        "recipe": {"lora": cfg.lora, "targets": cfg.lora_targets, "bf16": cfg.bf16},
        "lists": rows,
        "pointwise_step": {"samples": len(points), "seconds": t_point},
        "command": command_line(),
        "machine": machine(),
        "threads": torch.get_num_threads(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "list_step.json").write_text(json.dumps(result, indent=2))
    (out / "list_step.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    lines = [
        f"# One candidate list, forward and backward: {r['backbone']}",
        "",
        "| list | prefix + candidate tokens | full-prompt tokens | prompt once | one prompt per "
        "candidate | speed-up | loss (once / per candidate) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, x in enumerate(r["lists"], 1):
        lines.append(
            f"| {k} | {x['prefix_tokens']} + {x['suffix_tokens']} ({x['candidates']} "
            f"candidates) | {x['full_prompt_tokens']} | {x['seconds_prefix_once']:.2f} s | "
            f"{x['seconds_full_prompts']:.2f} s | "
            f"{x['seconds_full_prompts'] / x['seconds_prefix_once']:.1f}x | "
            f"{x['loss_prefix_once']:.4f} / {x['loss_full_prompts']:.4f} |"
        )
    p = r["pointwise_step"]
    lines += [
        "",
        f"A pointwise step of the recipe's batch ({p['samples']} prompts): {p['seconds']:.2f} s.",
        "",
        f"Recipe: {r['recipe']}; {r['threads']} thread(s).",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Machine: {r['machine']}",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    app()
