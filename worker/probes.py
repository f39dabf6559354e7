"""Probe prompts: made-up users rating real catalogue items. The worker records the new model's
scores on them; a serving process repeats them before it activates the adapter. No real user's
data goes into them, so they can be kept with the adapter forever."""

from __future__ import annotations

import random

from e2urec.backbones import Backbone
from e2urec.data import Catalog, User
from e2urec.data.prompts import build_prompt
from e2urec.scoring import predict_like

_PROFILES = [
    User(0, "female", "25-34", "programmer"),
    User(0, "male", "35-44", "writer"),
    User(0, "female", "18-24", "college/grad student"),
    User(0, "male", "50-55", "retired"),
]


def make_probes(backbone: Backbone, catalog: Catalog, n: int = 8, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    items = sorted(catalog.items.values(), key=lambda i: i.item_id)
    prompts = []
    for k in range(n):
        history = [(rng.choice(items), float(rng.randint(1, 5))) for _ in range(5)]
        prompts.append(
            build_prompt(_PROFILES[k % len(_PROFILES)], history, rng.choice(items), catalog.domain)
        )
    scores = predict_like(backbone, prompts)
    return [
        {"prefix": p.prefix, "suffix": p.suffix, "p_like": float(v)}
        for p, v in zip(prompts, scores, strict=True)
    ]
