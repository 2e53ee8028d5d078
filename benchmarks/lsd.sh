#!/usr/bin/env bash
# Learned sampler rows (issue: LSD / LSD+ / lsd_joint) beside the hand-made rules, on the oracle
# and the trained teacher of both sources. Baseline rows (ancestral, dilated at 1..32 steps) come
# from benchmarks/reference_tables.sh; needs the teachers of benchmarks/train_teachers.sh.
#   bash benchmarks/lsd.sh && python benchmarks/collect_tables.py runs/lsd
set -euo pipefail
N=${N:-2000}
JOINT_STEPS=${JOINT_STEPS:-"8 4 16"}
BASELINES=${BASELINES:-"lsd lsd_plus"}  # the transition-divergence rows, at 8 steps
TEACHERS=${TEACHERS:-"oracle_markov oracle_hmm teacher_markov teacher_hmm"}
mkdir -p runs/lsd
for t in $TEACHERS; do
  data=${t#*_}
  if [[ $t == oracle_* ]]; then kind=oracle; teacher=(teacher=oracle); else kind=teacher; teacher=(teacher=saved teacher.path=runs/teacher_$data); fi
  fewstep-eval "${teacher[@]}" data=$data sampler=avoid_neighbours "eval.steps=[4,8,16]" eval.num_samples=$N \
    hydra.run.dir=runs/lsd/$t/avoid_neighbours
  runs=""
  for M in $JOINT_STEPS; do runs="$runs lsd_joint:$M"; done
  for method in $BASELINES; do runs="$runs $method:8"; done
  for run in $runs; do
    method=${run%:*}; M=${run#*:}
    rm -rf runs/lsd/$t/export_${method}_$M
    start=$(date +%s)
    fewstep-train experiment=${method}_$kind data=$data "${teacher[@]:1}" student.steps=$M eval.after_training=false \
      export_dir=runs/lsd/$t/export_${method}_$M hydra.run.dir=runs/lsd/$t/train_${method}_$M
    echo "$t $method M=$M train_s=$(( $(date +%s) - start ))" | tee -a runs/lsd/train_times.txt
    fewstep-eval "${teacher[@]}" data=$data sampler=saved sampler.path=runs/lsd/$t/export_${method}_$M \
      eval.num_samples=$N hydra.run.dir=runs/lsd/$t/${method}_$M
  done
done
