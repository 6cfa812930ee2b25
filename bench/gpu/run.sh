#!/usr/bin/env bash
# The GPU bench, one command (README.md): on a GPU machine with torch, transformers, accelerate
# and peft, after bench/gpu/prepare.sh filled .whl/ and .gpu/ here and two calls carried them:
#   bash bench/gpu/run.sh --stage     # call 1 (carry .whl .gpu/data .gpu/smol-a): lists them
#   bash bench/gpu/run.sh             # call 2 (carry .gpu/smol-b): the bench, under 10 min
#   bash bench/gpu/run.sh --dry-run   # here, on CPU: the same steps at toy size, no install
# 1. installs the wheels into /tmp/site; 2. rebuilds the GGUF file (sha256 checked) and the
# samples under /tmp/gpu; 3. bench/real_tldr.py --device cuda (SmolLM2-135M-Instruct, the whole
# split); 4. bench/gpu/llama_steps.py: PPO and GRPO steps on a 1.07 B Llama (bf16, sdpa).
# Tables and logs go to $OUT (the device tool's folder; /tmp/gpu/out without it).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-run}
if [[ $mode == --stage ]]; then
  du -sh .whl .gpu/data .gpu/smol-a
  exit 0
fi
if [[ $mode != run && $mode != --dry-run ]]; then
  echo "usage: bash bench/gpu/run.sh [--stage | --dry-run]" >&2
  exit 2
fi
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu/out}
TMP=/tmp/gpu
mkdir -p "$OUT" "$TMP/tldr" "$TMP/smol"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [[ $mode == run ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi

"$PY" - "$TMP" <<'EOF'
import hashlib
import lzma
import shutil
import sys
from pathlib import Path

tmp, carried = Path(sys.argv[1]), Path(".gpu")
digest, name = (carried / "smol-a" / "SHA256").read_text().split()
gguf = tmp / "smol" / name
with gguf.open("wb") as f:
    for half in ("smol-a", "smol-b"):
        f.write((carried / half / "part").read_bytes())
if hashlib.sha256(gguf.read_bytes()).hexdigest() != digest:
    sys.exit(f"{gguf}: sha256 differs from .gpu/smol-a/SHA256 (a half missing or stale?)")
for packed in (carried / "data").glob("*.xz"):
    with lzma.open(packed) as f, (tmp / "tldr" / packed.stem).open("wb") as g:
        shutil.copyfileobj(f, g)
for plain in ("split.py", "README.md"):
    shutil.copy(carried / "data" / plain, tmp / "tldr" / plain)
print(f"{gguf} ({gguf.stat().st_size} bytes, sha256 ok); samples in {tmp / 'tldr'}")
EOF

model=(--model "$TMP/smol" --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf)
work=$TMP/real_tldr
if [[ $mode == run ]]; then
  sizes=(--device cuda)
  llama=()
else  # toy sizes on CPU: checks the commands, the table and every file path
  sizes=(--device cpu --sft-steps 1 --sft-batch 2 --rm-pairs 2 --rm-batch 2 --test-pairs 4
    --ppo-steps 1 --ppo-rollouts 4 --eval-posts 2 --max-words 32
    --set stages.ppo.trainer_settings.chunk_size=4
    --set stages.ppo.trainer_settings.per_device_train_batch_size=4
    --set stages.ppo.trainer_settings.max_new_tokens=4
    --set stages.eval.evaluator_settings.max_new_tokens=4)
  llama=(--tiny --steps 1 --batch 4)
fi
timeout 420 "$PY" bench/real_tldr.py "${sizes[@]}" "${model[@]}" --data "$TMP/tldr" \
  --work "$work" 2>&1 | tee "$OUT/real_tldr.md"
run_dir=$work/runs/smol_tldr_ppo
timeout 150 "$PY" bench/gpu/llama_steps.py "${llama[@]}" --reward "$run_dir/reward_model" \
  --tokenizer "$run_dir/sft" --prompts "$work/data/sft" --work "$TMP/llama" 2>&1 \
  | tee "$OUT/llama_steps.md"
cp "$work/run.log" "$OUT/real_tldr_run.log"
