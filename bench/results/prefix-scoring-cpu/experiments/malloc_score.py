import time, random, torch
from pathlib import Path
from e2urec.backbones import load_backbone
from e2urec.data import Catalog, SampleConfig, load_dataset, make_splits
from e2urec.scoring import predict_like
bb = load_backbone("smollm2-135m")
ds = load_dataset("auto", Path("/work/shared/data/ml-1m"), ratings_file="ratings.users_1-2999.partial.dat")
splits = make_splits(ds, SampleConfig(max_samples=3000, seed=0))
cat = Catalog.of(ds)
prompts = [cat.prompt(s) for s in random.Random(0).sample(list(splits.train), 128)]
predict_like(bb, prompts[:64], batch_size=64)
t = time.perf_counter(); predict_like(bb, prompts, batch_size=64); print(f"scoring 128 prompts at batch 64: {time.perf_counter()-t:.2f} s", flush=True)
