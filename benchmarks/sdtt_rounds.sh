#!/usr/bin/env bash
# SDTT rounds on the hidden Markov source (issue 22): train three rounds (32 -> 16 -> 8 -> 4 steps) in one
# run, then evaluate the teacher's own ancestral rows at 32/16/8/4 and every round's student at 16/8/4
# with the same sampler, seed and sample count, and write docs/sdtt.md.
#   bash benchmarks/sdtt_rounds.sh TEACHER_DIR [OUT]      (TEACHER_DIR: fewstep-train experiment=teacher_hmm)
# Environment: N samples per row (2000); PREFIX, a command every step runs under (e.g. "flock /tmp/lock");
# TRAIN_ARGS, extra fewstep-train overrides (e.g. objective=sdtt_forward_kl).
set -euo pipefail
TEACHER=${1:?usage: sdtt_rounds.sh TEACHER_DIR [OUT]}
OUT=${2:-runs/sdtt}
N=${N:-2000}
PREFIX=${PREFIX:-}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
teacher=(data=hmm threads=1 teacher=saved "teacher.path=$TEACHER")

if [[ ! -d $OUT/export ]]; then
  start=$(date +%s)
  $PREFIX fewstep-train experiment=sdtt_hmm "teacher.path=$TEACHER" export_dir="$OUT/export" hydra.run.dir="$OUT/train" \
    ${TRAIN_ARGS:-}
  echo "train_s=$(( $(date +%s) - start ))" | tee "$OUT/train_time.txt"
fi
if [[ ! -f $OUT/eval/teacher/metrics.json ]]; then  # the teacher's own rows (the same for every run: link them)
  $PREFIX fewstep-eval "${teacher[@]}" sampler=ancestral "eval.steps=[32,16,8,4]" eval.num_samples=$N \
    hydra.run.dir="$OUT/eval/teacher"
fi
for round in "$OUT"/export/rounds/round*; do
  $PREFIX fewstep-eval "${teacher[@]}" sampler=saved "sampler.path=$round" "eval.steps=[16,8,4]" eval.num_samples=$N \
    hydra.run.dir="$OUT/eval/$(basename "$round")"
done
python "$(dirname "$0")/sdtt_table.py" "$OUT" --out docs/sdtt.md
