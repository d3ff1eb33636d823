#!/usr/bin/env bash
# One GPU session for issue 24's targets (docs/benchmarks.md), in under 10 minutes on one H100: the default
# pipeline at 64x64 and 256x256, phi alone + refinement at 256x256, the fraction of the time the network
# waits on the host (with the host work overlapped and in line), and a whole acquisition (10,000 frames of
# 256x256 at 0.5 /um^2, extrapolated from 50 through `smlm-uq predict`, in one process and on a dask
# LocalCluster of 1 and 2 workers). Installs nothing: what cannot run for want of a module is skipped with a
# line saying so. napari and Qt are hidden (benchmarks/qt_free): the benchmarks must run without them.
# From the repository root:
#     OUT=/some/folder PYTHONPATH=src bash benchmarks/gpu_session.sh
# Writes OUT/log.txt (tables included), OUT/throughput_levers.json, OUT/throughput_acquisition.json,
# OUT/throughput_more.json.
set -u
O=${OUT:-/tmp/gpu_session}
PY=${PYTHON:-python3}
mkdir -p "$O"
log() { echo "== $(date +%T) $*" | tee -a "$O/log.txt"; }
log start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$O/log.txt" 2>&1
PYTHONPATH=src $PY - <<'PYEOF' 2>&1 | tee -a "$O/log.txt"
import importlib.util
for name in ("torch", "numpy", "scipy", "tifffile", "tqdm", "zarr", "dask", "distributed", "napari", "qtpy"):
    print(f"module {name}: {'present' if importlib.util.find_spec(name) else 'missing'}")
PYEOF
if ! PYTHONPATH=src $PY -c "import torch, numpy, scipy, tifffile, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
     >>"$O/log.txt" 2>&1; then
  log "torch, numpy, scipy, tifffile and a CUDA GPU are needed: nothing measured"; exit 1
fi
export PYTHONPATH=src:benchmarks/qt_free

log "qt-free: the core, the CLI and the dask runner import with napari and Qt hidden"
$PY -c "
import sys, napari_smlm_uq.inference.pipeline, napari_smlm_uq.inference.distributed, napari_smlm_uq.cli
bad = [m for m in sys.modules if m.partition('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'magicgui', 'superqt')]
print('qt-free imports:', 'ok' if not bad else f'FAILED: {bad}')" >>"$O/log.txt" 2>&1 || log "qt-free check exit $?"

log "levers: 64x64 and 256x256, phi alone (+ refinement), default pipeline, host work overlapped and in line"
timeout 200 $PY benchmarks/throughput.py --devices cuda --sizes 64,256 --acquisition-frames 0 --cap 165 \
  --levers "phi alone;phi alone + refinement;phi alone + refinement, host work in line;phi alone + refinement, host work in one thread;default pipeline;host work in line;host work in one thread" \
  --out "$O" --name throughput_levers.json >>"$O/log.txt" 2>&1 || log "levers exit $?"

log "whole acquisition: smlm-uq predict on 50 frames of 256x256, one process and LocalCluster of 1 and 2 workers"
timeout 230 $PY benchmarks/throughput.py --devices cuda --sizes "" --acquisition-frames 50 --acquisition-size 256 \
  --cluster 1,2 --cap 180 --out "$O" --name throughput_acquisition.json >>"$O/log.txt" 2>&1 || log "acquisition exit $?"

log "more levers (as time allows): fp32, frame batch 32, torch.compile"
timeout 90 $PY benchmarks/throughput.py --devices cuda --sizes 64,256 --acquisition-frames 0 --cap 55 \
  --levers "fp32;frame batch 32;torch.compile" --out "$O" --name throughput_more.json >>"$O/log.txt" 2>&1 \
  || log "more levers exit $?"
grep -h "qt_free: blocked" "$O/log.txt" >/dev/null && log "napari or Qt was imported somewhere (see qt_free lines above)"
log end
