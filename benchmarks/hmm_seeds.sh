#!/usr/bin/env bash
# The chunk head (K = 4 and 8) against every training-free row on other seeds of the hidden Markov
# source, oracle teacher: one leaderboard per seed (about 15 minutes each on 2 CPU cores).
#   bash benchmarks/hmm_seeds.sh            # seeds 1 and 2 -> runs/leaderboard_hmm_seed{1,2}/leaderboard.md
#   bash benchmarks/hmm_seeds.sh 3 4 5
set -euo pipefail
seeds=("$@")
[ ${#seeds[@]} -eq 0 ] && seeds=(1 2)
for seed in "${seeds[@]}"; do
  fewstep-leaderboard data=hmm teacher=oracle data.seed="$seed" threads=1 \
    '~students.lsd_joint' '~students.joint_head_k4' '~students.head_dilated_k4' '~students.chunk_head_k2' \
    hydra.run.dir="runs/leaderboard_hmm_seed$seed"
done
