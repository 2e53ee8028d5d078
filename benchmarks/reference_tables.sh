#!/usr/bin/env bash
# The reference quality-vs-steps tables in README: the oracle and the trained teachers, on both
# sources, for the ancestral (random order), confidence and dilated samplers; and the paths
# teacher left to right / random order / confidence at 1, 2, 4 and 8 tokens per step.
# Needs the teachers from benchmarks/train_teachers.sh in runs/.
#   bash benchmarks/reference_tables.sh && python benchmarks/collect_tables.py runs/eval
set -euo pipefail
N=${N:-2000}
SOURCES=${SOURCES:-"markov hmm"}   # e.g. SOURCES=hmm PATHS=0 for the hidden source alone
for data in $SOURCES; do
  for sampler in ancestral confidence dilated; do
    fewstep-eval teacher=oracle data=$data sampler=$sampler eval.num_samples=$N hydra.run.dir=runs/eval/oracle_${data}/$sampler
    fewstep-eval teacher=saved teacher.path=runs/teacher_$data data=$data sampler=$sampler eval.num_samples=$N \
      hydra.run.dir=runs/eval/teacher_${data}/$sampler
  done
done
[ "${PATHS:-1}" = 1 ] || exit 0
for sampler in blockwise ancestral confidence; do
  fewstep-eval teacher=saved teacher.path=runs/teacher_paths data=paths sampler=$sampler "eval.steps=[16,8,4,2]" \
    eval.num_samples=$N hydra.run.dir=runs/eval/teacher_paths/$sampler
done
