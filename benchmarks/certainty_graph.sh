#!/usr/bin/env bash
# The certainty pipeline on another graph, every setting as shipped: the teacher, the default
# (full-weight) student, the interface evaluations over data seeds 0-2, and the threshold sweep.
#   flock /tmp/fewstep_cpu.lock bash benchmarks/certainty_graph.sh GRAPH_SEED [OUT]
set -euo pipefail
G="data.graph_seed=${1:?usage: certainty_graph.sh GRAPH_SEED [OUT]}"
R=${2:-runs/graph$1}
export TQDM_DISABLE=1
mkdir -p "$R"
fewstep-train experiment=teacher_paths $G export_dir=$R/teacher hydra.run.dir=$R/teacher_run > $R/teacher.log 2>&1
start=$(date +%s)
fewstep-train experiment=certainty_paths $G teacher.path=$R/teacher data.cache_dir=$R/sg export_dir=$R/student \
  hydra.run.dir=$R/student_run > $R/student.log 2>&1
echo "certainty: $(( $(date +%s) - start )) s wall" | tee $R/time.txt
for s in 0 1 2; do
  fewstep-eval data=paths $G teacher=saved teacher.path=$R/teacher sampler=saved sampler.path=$R/student \
    data.seed=$s hydra.run.dir=$R/eval/student_s$s > /dev/null
  fewstep-eval data=paths $G teacher=saved teacher.path=$R/teacher sampler=blockwise sampler.temperature=0 \
    "eval.steps=[16]" data.seed=$s hydra.run.dir=$R/eval/teacher_argmax_s$s > /dev/null
done
python benchmarks/certainty_sweep.py --teacher $R/teacher --student full=$R/student --evals $R/eval --out $R/docs
