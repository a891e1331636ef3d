#!/usr/bin/env bash
# Fine-tuning on generated data (docs/finetune.md): train the demo's small 3D-ResNet on the
# demo's 10 motions with BN and with SN (the "pretrained" checkpoints), then train on 8 other
# motions (30 videos each) at 2 clips per process: from scratch, BN fine-tuned, the BN model
# converted to SN, and the SN model fine-tuned, for each seed in SEEDS. Prints one line per run
# (multi-view top-1 with 4 clips x 3 crops, wall time of its train.py command), then the mean
# over seeds. Finished runs are not run again.
#
#   SEEDS="0 1 2" bash benchmarks/finetune_demo.sh [extra train.py overrides for target runs]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=work_dirs/finetune_study
mkdir -p "$OUT"
EXTRA=("$@")

run() {  # name, then train.py arguments
  local name=$1; shift
  if [[ ! -f "$OUT/$name/test_results.json" ]]; then
    local start=$SECONDS
    python train.py --no-resume "$@" work_dir="$OUT/$name" > "$OUT/$name.log" 2>&1
    echo $((SECONDS - start)) > "$OUT/$name.seconds"
  fi
  python -c "import json, sys; print(f'| $name | {json.load(open(sys.argv[1]))[\"top1\"]:.1f} \
| {open(sys.argv[2]).read().strip()} |')" "$OUT/$name/test_results.json" "$OUT/$name.seconds"
}

# The checkpoints to start from (configs/demo.yaml: 16 clips per process, 10 epochs).
run source_bn --config configs/demo.yaml model.norm=bn
run source_sn --config configs/demo.yaml model.norm=sn
python -c "from snvideo.data.synthetic import make_demo_dataset; from snvideo.config import \
load_config; c = load_config('configs/finetune_demo.yaml'); \
make_demo_dataset(c.data.demo_dir, **c.data.demo_kwargs)"

BN=$OUT/source_bn/best.pt
SN=$OUT/source_sn/best.pt
for seed in ${SEEDS:-0 1 2}; do
  T=(--config configs/finetune_demo.yaml train.seed="$seed" "${EXTRA[@]}")
  run "scratch_bn_seed$seed" "${T[@]}" model.norm=bn
  run "scratch_sn_seed$seed" "${T[@]}" model.norm=sn
  run "bn_finetuned_seed$seed" "${T[@]}" model.norm=bn model.pretrained=$BN
  run "bn_finetuned_frozen_stats_seed$seed" "${T[@]}" model.norm=bn model.pretrained=$BN \
    model.freeze_norm_stats=true
  run "bn_converted_to_sn_seed$seed" "${T[@]}" model.norm=sn model.pretrained=$BN \
    model.pretrained_bn_to_sn=true
  run "bn_converted_to_sn_logit4_seed$seed" "${T[@]}" model.norm=sn model.pretrained=$BN \
    model.pretrained_bn_to_sn=true model.pretrained_bn_logit=4
  run "sn_finetuned_seed$seed" "${T[@]}" model.norm=sn model.pretrained=$SN
done

python - "$OUT" <<'PY'
import collections, json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
runs = collections.defaultdict(list)
for path in sorted(out.glob("*_seed*/test_results.json")):
    name = path.parent.name.rsplit("_seed", 1)[0]
    runs[name].append((json.loads(path.read_text())["top1"],
                       int((out / f"{path.parent.name}.seconds").read_text())))
print("| run | top-1 per seed | mean top-1 | mean wall s |")
for name, values in runs.items():
    tops = [t for t, _ in values]
    print(f"| {name} | {', '.join(f'{t:.1f}' for t in tops)} | {statistics.mean(tops):.1f} | "
          f"{statistics.mean(s for _, s in values):.0f} |")
PY
