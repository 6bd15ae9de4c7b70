#!/bin/bash
# The method comparison's r18 ARD parts with student.train.amp=bf16 (seeds 0-2), evaluated as the comparison
# evaluates them; summary in results/bf16_training-cpu.md.  Usage: benchmarks/bf16_training_check.sh [DATA_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/cifar10}
out=runs/bf16-check
mkdir -p "$out"
export OMP_NUM_THREADS=1
for s in 0 1 2; do
  d=$out/r18-ard-bf16-s$s
  start=$SECONDS
  .venv/bin/rkd distill benchmarks/method_comparison/base.yaml \
    --teacher benchmarks/results/method_comparison/teacher/model.safetensors --out "$d/student" --resume \
    --data-root "$data" --set student.model.name=resnet18 --set student.model.width=0.125 \
    --set student.method.name=ard --set seed=$s --set student.train.amp=bf16 > "$d.distill.log" 2>&1
  echo "seed $s: distill $((SECONDS - start)) s"
  .venv/bin/rkd eval "$d/student/model.safetensors" --data cifar10 --data-root "$data" --seed 0 --n 1000 \
    --attacks clean,fgsm,pgd20,cw --report "$d/eval.json" > "$d.eval.log" 2>&1
done
