#!/usr/bin/env bash
# Certainty-forcing distillation on `paths`: full-weight (default) and LoRA students (timed, from an
# empty data cache), the interface evaluations over 3 data seeds, and the threshold sweep (table + PNG).
#   flock /tmp/fewstep_cpu.lock bash benchmarks/certainty.sh [TEACHER_DIR]
#   VARIANTS=full ... trains and evaluates the default (full-weight) student only
set -euo pipefail
TEACHER=${1:-runs/teacher_paths}
VARIANTS=${VARIANTS:-full lora}
OUT=runs/certainty
export TQDM_DISABLE=1
rm -rf "$OUT"
mkdir -p "$OUT/eval"

# 1. distillation (the first run also generates the self-generated data set; the second reuses it)
for variant in $VARIANTS; do
  experiment=certainty_paths
  [ "$variant" = lora ] && experiment=certainty_paths_lora
  start=$(date +%s)
  fewstep-train experiment=$experiment teacher.path="$TEACHER" data.cache_dir="$OUT/self_generated" \
    export_dir="$OUT/$variant/export" hydra.run.dir="$OUT/$variant/train" > "$OUT/train_$variant.log" 2>&1
  echo "$variant: $(( $(date +%s) - start )) s wall (data, training, threshold choice, final table, export)" \
    | tee -a "$OUT/train_times.txt"
done

# 2. the interface: held-out prompts, three data seeds
first=${VARIANTS%% *}   # the teacher gets the same threshold decoder as the first student
threshold=$(python -c "import json; print(json.load(open('$OUT/$first/export/sampler.json'))['config']['threshold'])")
for seed in 0 1 2; do
  for variant in $VARIANTS; do
    fewstep-eval data=paths teacher=saved teacher.path="$TEACHER" sampler=saved sampler.path="$OUT/$variant/export" \
      data.seed=$seed hydra.run.dir="$OUT/eval/student_${variant}_s$seed" > /dev/null
  done
  fewstep-eval data=paths teacher=saved teacher.path="$TEACHER" sampler=blockwise sampler.temperature=0 \
    "eval.steps=[16]" data.seed=$seed hydra.run.dir="$OUT/eval/teacher_argmax_s$seed" > /dev/null
  fewstep-eval data=paths teacher=saved teacher.path="$TEACHER" data.seed=$seed \
    hydra.run.dir="$OUT/eval/teacher_ancestral_s$seed" > /dev/null
  fewstep-eval data=paths teacher=saved teacher.path="$TEACHER" sampler=entropy_threshold \
    sampler.threshold="$threshold" data.seed=$seed hydra.run.dir="$OUT/eval/teacher_threshold_s$seed" > /dev/null
done

# 3. the sweep over thresholds, diversity, and the collected tables
students=()
for variant in $VARIANTS; do students+=(--student "$variant=$OUT/$variant/export"); done
python benchmarks/certainty_sweep.py --teacher "$TEACHER" "${students[@]}" --evals "$OUT/eval" --out docs | tee "$OUT/sweep.txt"
cat "$OUT/train_times.txt"
