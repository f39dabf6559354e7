import time, torch
from pathlib import Path
from transformers import DynamicCache
from bench.prefix_scoring import build_requests
from e2urec.scoring import prefix_answer_logits, yes_probability
from e2urec.encoding import collate

def chunked_logits(model, fmt, prefixes, suffixes, device, chunk):
    counts = [len(s) for s in suffixes]
    p_batch = collate(fmt, prefixes).to(device)
    out = model(input_ids=p_batch.input_ids, attention_mask=p_batch.attention_mask, position_ids=p_batch.position_ids, use_cache=True, logits_to_keep=1)
    layers = [(l.keys, l.values) for l in out.cache.layers]
    owner = torch.tensor([b for b, n in enumerate(counts) for _ in range(n)])
    flat = [s for g in suffixes for s in g]
    order = sorted(range(len(flat)), key=lambda i: len(flat[i]))
    res = torch.empty(len(flat), model.config.vocab_size)
    plen = p_batch.attention_mask.sum(-1)
    for c in range(0, len(order), chunk):
        idx = torch.tensor(order[c:c + chunk])
        rows = owner[idx]
        cache = DynamicCache()
        for i, (k, v) in enumerate(layers):
            cache.update(k[rows], v[rows], i)
        s_batch = collate(fmt, [flat[i] for i in idx])
        o = model(input_ids=s_batch.input_ids, attention_mask=torch.cat([p_batch.attention_mask[rows], s_batch.attention_mask], 1), position_ids=plen[rows][:, None] + s_batch.position_ids, cache=cache, use_cache=True, logits_to_keep=1)
        res[idx] = o.logits[:, -1]
    return res

if __name__ == "__main__":
    bb, reqs, _ = build_requests("smollm2-135m", Path("/work/shared/data/ml-1m"), "ratings.users_1-2999.partial.dat", 8, 0)
    m, fmt, dev = bb.model, bb.format, bb.device
    P = [r[0] for r in reqs]; S = [r[1] for r in reqs]
    def timed(f):
        with torch.inference_mode():
            f(); t = time.perf_counter(); out = f(); return time.perf_counter() - t, out
    _, ref = timed(lambda: torch.cat([prefix_answer_logits(m, fmt, [p], [s], dev) for p, s in reqs]))
    for name, f in [("now, one at a time", lambda: torch.cat([prefix_answer_logits(m, fmt, [p], [s], dev) for p, s in reqs])),
                    ("sorted chunks of 25, one at a time", lambda: torch.cat([chunked_logits(m, fmt, [p], [s], dev, 25) for p, s in reqs])),
                    ("sorted chunks of 50, 8 in one", lambda: chunked_logits(m, fmt, P, S, dev, 50)),
                    ("sorted chunks of 100, 8 in one", lambda: chunked_logits(m, fmt, P, S, dev, 100)),
                    ("sorted chunks of 400, 8 in one", lambda: chunked_logits(m, fmt, P, S, dev, 400))]:
        t, out = timed(f)
        print(name, f"{t:.2f} s", "max dP", (yes_probability(out, fmt) - yes_probability(ref, fmt)).abs().max().item(), flush=True)
