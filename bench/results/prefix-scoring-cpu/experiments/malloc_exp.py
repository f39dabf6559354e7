import time, torch
from e2urec.backbones import load_backbone
bb = load_backbone("smollm2-135m"); m = bb.model.eval()
x = torch.randint(100, 1000, (400, 43))
def timed(f):
    with torch.inference_mode():
        f(); t = time.perf_counter(); f(); return time.perf_counter() - t
for rows in (50, 400):
    t = timed(lambda: [m(input_ids=x[i:i+rows], logits_to_keep=1) for i in range(0, 400, rows)])
    print(f"{rows} rows a pass: {t:.2f} s for 400 rows", flush=True)
