# GPU call 1 (starts the machine): wheels, data, the model's first part; then check every import
# the runs need and one bf16 step of `tiny` on CUDA. Keep it short: call 2 must follow within the
# machine's warm time (30 s), or what this copied to /tmp is lost.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu1/whl/*.whl 2>&1 | tail -3
mkdir -p /tmp/m /tmp/data && cp .gpu1/part1 /tmp/m/ && tar xJf .gpu1/ml-1m.tar.xz -C /tmp/data
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L; nproc; python3 --version
python3 - <<'PY' 2>&1 | grep -v Warning | tail -8
import torch, transformers, peft, gguf, fastapi, sqlalchemy, pydantic, uvicorn, accelerate
import bench.paper_table, bench.serving, e2urec.cli, service.cli, service.api.main
print("torch", torch.__version__, torch.version.cuda, torch.cuda.get_device_name(),
      "bf16", torch.cuda.is_bf16_supported())
print("transformers", transformers.__version__, "peft", peft.__version__)
from e2urec.backbones import load_backbone
b = load_backbone("tiny", corpus=["Toy Story (1995) Comedy", "Heat (1995) Action"] * 20)
ids = b.tokenizer("Toy Story Heat", return_tensors="pt").input_ids.to(b.device)
with torch.autocast("cuda", dtype=torch.bfloat16):
    loss = b.model(input_ids=ids, labels=ids).loss
loss.backward()
print("tiny on", b.device, "loss", loss.item())
PY
ls /tmp/data/*
