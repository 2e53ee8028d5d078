#!/usr/bin/env bash
# Joint-sampling head (issue #6): train heads at K = 4 and 8 tokens per full forward on the Markov
# task, with the oracle and with the trained teacher as target (the default experiments, timed);
# evaluate them, naive parallel decoding at the same number of full forwards (same reveal rule:
# lowest entropy first) and the exact one-token-per-forward sampler on 2000 samples; print the
# tables of the README (gap closed, wall-time ratios, parameter counts). Run it under the CPU lock:
#   flock /tmp/fewstep_cpu.lock bash benchmarks/joint_head.sh [TEACHER_DIR] [OUT]
# KS="4" or KS="8" runs one K; baselines already evaluated under OUT are reused.
set -euo pipefail
TEACHER=${1:-runs/teacher_markov}
OUT=${2:-runs/joint_head}
N=${N:-2000}
KS=${KS:-"4 8"}
export TQDM_DISABLE=1
mkdir -p "$OUT"
for target in oracle teacher; do
  teacher_args=(teacher=oracle)
  [ $target = teacher ] && teacher_args=(teacher=saved "teacher.path=$TEACHER")
  [ -f "$OUT/eval/${target}_base/metrics.json" ] || fewstep-eval "${teacher_args[@]}" threads=1 sampler=confidence \
    sampler.score=neg_entropy "eval.steps=[8,4,32]" eval.num_samples=$N hydra.run.dir="$OUT/eval/${target}_base"
done
for k in $KS; do
  for target in oracle teacher; do
    teacher_args=(teacher=oracle)
    [ $target = teacher ] && teacher_args=(teacher=saved "teacher.path=$TEACHER")
    rm -rf "$OUT/${target}_k$k" "$OUT/train/${target}_k$k"
    start=$(date +%s)
    fewstep-train experiment=joint_head_$target "${teacher_args[@]:1}" student.tokens_per_forward=$k eval.after_training=false \
      export_dir="$OUT/${target}_k$k" hydra.run.dir="$OUT/train/${target}_k$k" > "$OUT/train_${target}_k$k.log" 2>&1
    echo "train $target K=$k: $(( $(date +%s) - start )) s (startup + training + export)" | tee -a "$OUT/train_times.txt"
    fewstep-eval "${teacher_args[@]}" threads=1 sampler=saved sampler.path="$OUT/${target}_k$k" eval.num_samples=$N \
      hydra.run.dir="$OUT/eval/${target}_head_k$k"
  done
done
python benchmarks/joint_head_tables.py "$OUT" | tee "$OUT/tables.md"
