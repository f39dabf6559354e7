import time, torch
from pathlib import Path
from transformers import AttentionInterface
from bench.prefix_scoring import build_requests
from e2urec.scoring import prefix_answer_logits, yes_probability
from e2urec.encoding import collate

NEG = -1e30

def shared_prefix_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, shared=None, **kwargs):
    # query [R, Hq, S, d]; key/value [R, Hkv, S, d]: this pass's (suffix) tokens only
    Kp, Vp = shared["kv"][module.layer_idx]      # [U, Hkv, P, d]
    pmask = shared["prefix_mask"]                # [U, P] bool
    smask = shared["suffix_mask"]                # [R, S] bool
    spans = shared["spans"]                      # [(u, start, end)] rows of each user
    R, Hq, S, d = query.shape
    Hkv = key.shape[1]; g = Hq // Hkv
    out = torch.empty(R, S, Hq, d, dtype=query.dtype, device=query.device)
    causal = torch.ones(S, S, dtype=torch.bool, device=query.device).tril()
    for u, a, b in spans:
        n = b - a
        q = query[a:b].view(n, Hkv, g, S, d)
        # prefix part: one matmul per kv head over all this user's rows
        qp = q.permute(1, 2, 0, 3, 4).reshape(Hkv, g * n * S, d)
        sp = torch.matmul(qp, Kp[u].transpose(-1, -2)) * scaling      # [Hkv, g*n*S, P]
        sp = sp.view(Hkv, g, n, S, -1).permute(2, 0, 1, 3, 4)        # [n, Hkv, g, S, P]
        sp = sp.masked_fill(~pmask[u].view(1, 1, 1, 1, -1), NEG)
        # suffix part: each row to its own earlier tokens
        ks = key[a:b].unsqueeze(2)                                   # [n, Hkv, 1, S, d]
        ss = torch.matmul(q, ks.transpose(-1, -2)) * scaling         # [n, Hkv, g, S, S]
        m = causal.view(1, 1, 1, S, S) & smask[a:b].view(n, 1, 1, 1, S)
        ss = ss.masked_fill(~m, NEG)
        P = sp.shape[-1]
        w = torch.softmax(torch.cat([sp, ss], -1).float(), -1).to(query.dtype)
        wp, ws = w[..., :P], w[..., P:]
        o = torch.matmul(wp.permute(1, 2, 0, 3, 4).reshape(Hkv, g * n * S, P), Vp[u])  # [Hkv, g*n*S, d]
        o = o.view(Hkv, g, n, S, d).permute(2, 0, 1, 3, 4)
        o = o + torch.matmul(ws, value[a:b].unsqueeze(2))            # [n, Hkv, g, S, d]
        out[a:b] = o.reshape(n, Hq, S, d).transpose(1, 2)
    return out, None

AttentionInterface.register("e2urec_shared_prefix", shared_prefix_attention)

@torch.inference_mode()
def shared_logits(model, fmt, prefixes, suffixes, device):
    counts = [len(s) for s in suffixes]
    p_batch = collate(fmt, prefixes).to(device)
    out = model(input_ids=p_batch.input_ids, attention_mask=p_batch.attention_mask, position_ids=p_batch.position_ids, use_cache=True, logits_to_keep=1)
    cache = out.cache
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    rows = torch.tensor([b for b, n in enumerate(counts) for _ in range(n)])
    spans, a = [], 0
    for u, n in enumerate(counts):
        spans.append((u, a, a + n)); a += n
    s_batch = collate(fmt, [s for g in suffixes for s in g])
    prefix_len = p_batch.attention_mask.sum(-1)[rows]
    shared = {"kv": kv, "prefix_mask": p_batch.attention_mask.bool(), "suffix_mask": s_batch.attention_mask.bool(), "spans": spans}
    prev = model.config._attn_implementation
    model.set_attn_implementation("e2urec_shared_prefix")
    try:
        out = model(input_ids=s_batch.input_ids, attention_mask=s_batch.attention_mask, position_ids=prefix_len[:, None] + s_batch.position_ids, use_cache=False, logits_to_keep=1, shared=shared)
    finally:
        model.set_attn_implementation(prev)
    return out.logits[:, -1]

if __name__ == "__main__":
    bb, reqs, _ = build_requests("smollm2-135m", Path("/work/shared/data/ml-1m"), "ratings.users_1-2999.partial.dat", 8, 0)
    m, fmt, dev = bb.model, bb.format, bb.device
    P = [r[0] for r in reqs]; S = [r[1] for r in reqs]
    def timed(f):
        with torch.inference_mode():
            f(); t = time.perf_counter(); out = f(); return time.perf_counter() - t, out
    _, ref = timed(lambda: torch.cat([prefix_answer_logits(m, fmt, [p], [s], dev) for p, s in reqs]))
    for name, f in [("copy, one at a time", lambda: torch.cat([prefix_answer_logits(m, fmt, [p], [s], dev) for p, s in reqs])),
                    ("shared, one at a time", lambda: torch.cat([shared_logits(m, fmt, [p], [s], dev) for p, s in reqs])),
                    ("shared, 8 in one", lambda: shared_logits(m, fmt, P, S, dev)),
                    ("shared, 2 a pass", lambda: torch.cat([shared_logits(m, fmt, P[i:i+2], S[i:i+2], dev) for i in range(0, 8, 2)]))]:
        t, out = timed(f)
        print(name, f"{t:.2f} s", "max dP", (yes_probability(out, fmt) - yes_probability(ref, fmt)).abs().max().item(), flush=True)
