#!/usr/bin/env bash
# One GPU session (docs/benchmarks.md, docs/models.md): fine-tune the bundled models on the GPU with local
# background normalisation and varying backgrounds, calibrate them, then measure precision against the CRLB
# (new and old weights) and throughput. Needs torch, numpy, scipy, tifffile; run from the repository root:
#     OUT=/some/folder bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH=src
O=${OUT:-/tmp/gpu_session}
mkdir -p "$O"
log() { echo "== $(date +%T) $*" | tee -a "$O/log.txt"; }
log start; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$O/log.txt" 2>&1
python3 -c "import torch, numpy, scipy, tifffile; print('torch', torch.__version__, torch.cuda.get_device_name())" >>"$O/log.txt" 2>&1
cp src/napari_smlm_uq/models/weights/default.pt /tmp/old_default.pt
log train
timeout 235 python3 -m napari_smlm_uq.cli train --init default --target both --background-estimate local \
  --background-maps 0.5 --device cuda --data-workers 12 --batch-size 64 --lr 2e-4 --iterations 40000 \
  --stage-seconds 85 --checkpoint-every 500 --log-every 500 --seed 31 --out /tmp/retrain >>"$O/log.txt" 2>&1 || log "train exit $?"
log calibrate
timeout 60 python3 benchmarks/bundle_weights.py /tmp/retrain/model.pt --name default --frames 30 >"$O/calibration.json" 2>>"$O/log.txt" || log "calibrate exit $?"
cp src/napari_smlm_uq/models/weights/default.pt "$O/default.pt"
log precision new
timeout 140 python3 benchmarks/precision.py --device cuda --frames 200 --model default --out "$O/precision_new.json" \
  --plot "$O/precision_crlb.png" >>"$O/log.txt" 2>&1 || log "precision exit $?"
log throughput
timeout 90 python3 benchmarks/throughput.py --devices cuda --cap 80 --out /tmp/tp >>"$O/log.txt" 2>&1 || log "throughput exit $?"
cp /tmp/tp/throughput.json "$O/throughput.json" 2>/dev/null
log precision old
timeout 50 python3 benchmarks/precision.py --device cuda --frames 200 --movies d0.5,d3 --model /tmp/old_default.pt \
  --out "$O/precision_old.json" --plot /tmp/old.png >>"$O/log.txt" 2>&1 || log "precision old exit $?"
log end
