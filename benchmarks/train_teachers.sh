#!/usr/bin/env bash
# Train the three default teachers one after another into runs/, timing each (2 CPU cores).
#   bash benchmarks/train_teachers.sh
set -euo pipefail
mkdir -p runs
for name in markov hmm paths; do
  start=$(date +%s)
  fewstep-train experiment=teacher_$name export_dir=runs/teacher_$name hydra.run.dir=runs/train_teacher_$name \
    > runs/train_teacher_$name.log 2>&1
  echo "teacher_$name: $(( $(date +%s) - start )) s wall (training + export + final table)" | tee -a runs/train_times.txt
done
