#!/usr/bin/env bash
# The whole GPU check of the kit in one run on a lent H100/H200 (at most 8 minutes there), each part writing its
# JSON as it finishes so a run cut short still reports what it measured:
#   1. generation at 512 px, 30 steps: StableDiffusionInstructPix2PixPipeline in bf16 (as users run it) against the
#      kit's sampler, same batch (the largest power of two that fits), images/s, ratio, MFU, top kernels;
#   2. fine-tuning at 512 px: the kit's step against a loop written as diffusers' train_instruct_pix2pix.py does it,
#      samples/s, ratio, MFU, compile time (amortisation: compile_s / (s_per_step saved));
#   3. the same two at 256 px (fine-tuning without compile: its amortisation is read off the 512 px row);
#   4. the real-size rehearsal of params/cifar10.yaml on CUDA capped at 24 GiB, then params/cifar10_16gb.yaml
#      capped at 16 GiB up to fine-tuning (the stages after it are cifar10's): every stage on the GPU, per-stage time
#      and max_memory_allocated beside the memory model.
# Each part has a time limit (500 s in all); what a part measured before its limit is in its JSON.
#
# On the GPU machine (its Python has torch, transformers, accelerate, timm, torchvision, torchmetrics; the rest
# travels as wheels in .whl/, see the device tool's README):
#   bash benchmarks/gpu_run.sh "$OUT"
# Dry run on a CPU (tiny models, minutes): bash benchmarks/gpu_run.sh /tmp/gpu_dry --tiny
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/gpu_out}
tiny=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && py=.venv/bin/python
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tee "$out/device.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$out/device.txt" 2>/dev/null

if [ "$tiny" = "--tiny" ]; then
  quick=(--tiny --warmup 1 --iters 1 --gen-steps 2 --memory-batches 1 --no-compile)
  rehearse=(--scale tiny)
  slow=4  # the CPU dry run takes longer than the GPU run it rehearses
else
  quick=(--warmup 2 --iters 5)
  rehearse=(--scale real --weights-dtype bf16)  # half the bytes to write and read; the models load as configured
  slow=1
fi
part() {  # name, time limit on the GPU (s; 500 s in all), command...
  local name=$1 limit=$(($2 * slow)); shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$out/parts.txt"
}
part gen512 60 $py benchmarks/gpu_sd15.py --only generate --res 512 --gen-batch 0 --profile "${quick[@]}" --out "$out/gen512.json"
part train512 120 $py benchmarks/gpu_sd15.py --only train --res 512 --train-fast --profile "${quick[@]}" --out "$out/train512.json"
part gen256 40 $py benchmarks/gpu_sd15.py --only generate --res 256 --gen-batch 0 "${quick[@]}" --out "$out/gen256.json"
part train256 40 $py benchmarks/gpu_sd15.py --only train --res 256 --memory-batches 4 "${quick[@]}" --out "$out/train256.json"
part rehearsal24 150 env MVC_GPU_MEMORY_GIB=24 $py scripts/rehearse_real_size.py "${rehearse[@]}" --work /tmp/reh \
  --out "$out/rehearsal_24gib"
part rehearsal16 90 env MVC_GPU_MEMORY_GIB=16 $py scripts/rehearse_real_size.py "${rehearse[@]}" --work /tmp/reh \
  --keep-models --until finetune --profile params/cifar10_16gb.yaml --out "$out/rehearsal_16gib"
# the device tool brings back at most 8 files: everything in one archive, the summaries beside it
(cd "$out" && tar czf gpu_run.tgz --exclude gpu_run.tgz ./* && find . -maxdepth 1 -type f ! -name gpu_run.tgz \
  ! -name parts.txt ! -name 'rehearsal_*.md' ! -name device.txt -delete)
cat "$out/parts.txt"
