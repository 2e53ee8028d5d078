#!/usr/bin/env bash
# The chunk head on `paths` (experiment=chunk_head_paths: one teacher forward, then 16 head passes that write
# the answer left to right) on the default graph and a second one, against the teacher's argmax one token per
# step on held-out prompts, every row in one process on one thread (benchmarks/composed.py; other students
# go beside it with composed.py's --student NAME=DIR).
#   fewstep-train experiment=teacher_paths export_dir=T0                      # ~11 min each
#   fewstep-train experiment=teacher_paths data.graph_seed=1 export_dir=T1
#   bash benchmarks/chunk_head_paths.sh T0 T1 OUT                             # trains the heads (~9 min each) unless OUT has them
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: bash benchmarks/chunk_head_paths.sh TEACHER_GRAPH0 TEACHER_GRAPH1 OUT" >&2; exit 2; }
teachers=("$1" "$2"); out=$3
for g in 0 1; do
  t=${teachers[$g]}
  [ -f "$out/chunk_head_g$g/sampler.json" ] || fewstep-train experiment=chunk_head_paths data.graph_seed=$g \
    teacher.path="$t" export_dir="$out/chunk_head_g$g" hydra.run.dir="$out/train_g$g"
  python "$(dirname "$0")/composed.py" --teacher "$t" --graph-seed $g --seeds 0 1 --teacher-sampled \
    --student "chunk head=$out/chunk_head_g$g" --student "chunk head, sampled=$out/chunk_head_g$g:temperature=1" \
    --out "$out/bench_g$g"
done
