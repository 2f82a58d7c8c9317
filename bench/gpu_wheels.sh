#!/usr/bin/env bash
# Wheels that bench/bench_gpu.py needs on a lent GPU machine and its image lacks: diffusers and Snakemake
# with their dependencies, at requirements.txt's pins, for that machine's Python 3.12 on x86_64. The machine reaches no package
# registry, so they travel with the working tree (the device tool's `carry: [".whl"]`). Run here, once:
#
#     bash bench/gpu_wheels.sh            # fills .whl/ (ignored by git through .git/info/exclude)
#
# Packages the image already holds (torch, numpy, transformers 5.17, tokenizers, huggingface_hub 1.33, pandas,
# matplotlib, scipy, scikit-image, ...) are left out: its compiled builds must stay its own, and the working
# tree travels with at most 64 MiB (the shipped models are ~31 MB), so transformers (13.5 MB) is the image's:
# diffusers 0.42.1 asks huggingface_hub >= 1.32, which the image meets. pulp (16 MB, Snakemake's ILP
# scheduler) is left out too: bench_gpu.py runs Snakemake with `--scheduler greedy`. A dependency published
# only as a source archive is built into a pure-Python wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=.whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.whl/" >> .git/info/exclude; }
rm -rf "$DEST" && mkdir -p "$DEST"
# on the image (KINDS.md's package list): carried only where the pin matters (the model libraries)
ON_IMAGE="numpy pillow psutil pyyaml regex requests certifi charset-normalizer idna urllib3 jinja2 markupsafe
packaging filelock fsspec tqdm typing-extensions zipp attrs click rich pygments markdown-it-py mdurl wrapt
tabulate anyio h11 shellingham typer safetensors transformers tokenizers huggingface-hub hf-xet httpx2 httpcore2
annotated-doc pulp"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
"$PY" - <<'PYEOF' > "$DEST/.closure"
import importlib.metadata as md, re
from packaging.requirements import Requirement
seen, stack = {}, ["snakemake", "diffusers"]
while stack:
    name = stack.pop()
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        continue
    dist = md.distribution(name)
    seen[key] = dist.version
    for r in dist.requires or []:
        req = Requirement(r)
        if not req.marker or req.marker.evaluate({"extra": ""}):
            stack.append(req.name)
print("\n".join(f"{k}=={v}" for k, v in sorted(seen.items())))
PYEOF
while read -r pin; do
  name=${pin%%==*}
  case " $(echo $ON_IMAGE) " in *" $name "*) continue ;; esac
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp $PLATFORMS --platform any -d "$DEST" "$pin" 2>/dev/null \
    || "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DEST" "$pin"
done < "$DEST/.closure"
ls "$DEST"/*.whl | wc -l | xargs echo "wheels:"
du -sh "$DEST"
