"""`paths`: a conditional task whose answers are exactly checkable and have many valid forms.

A sparse directed graph is the support of a sparse Markov chain over `nodes` nodes. A prompt is
(start, goal); an answer is a walk a_1..a_n that leaves `start` along edges and ends at `goal`.
Sequences are laid out as `[start, goal, a_1, ..., a_n]`, so the model's vocabulary is the node set
and the answer occupies positions 2..n+1.

Training answers are drawn from the chain conditioned on reaching the goal in exactly n steps
(a Markov bridge, exact by backward messages A^(n-t)[., goal]). Many walks join most pairs, so a
sampler that reveals several answer tokens at once, each from its own marginal, splices pieces of
different valid walks into an invalid one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from teachers.sources.hmm import _sparse_rows

PROMPT_LEN = 2


@dataclass(frozen=True)
class PathsConfig:
    nodes: int = 24
    successors: int = 3
    answer_len: int = 16
    graph_seed: int = 0

    def validate(self) -> None:
        if self.nodes < 2:
            raise ValueError(f"nodes must be >= 2 (a start and a goal), got {self.nodes}")
        if not 1 <= self.successors <= self.nodes:
            raise ValueError(f"successors must be in [1, nodes={self.nodes}], got {self.successors}")
        if self.answer_len < 1:
            raise ValueError(f"answer_len must be at least 1, got {self.answer_len}")


class PathsTask:
    """Graph, exact bridge sampling and the answer checker."""

    def __init__(self, config: PathsConfig) -> None:
        config.validate()
        self.config = config
        gen = torch.Generator().manual_seed(config.graph_seed)
        self.transition = _sparse_rows(config.nodes, config.nodes, config.successors, gen)  # (N, N)
        self.edges = self.transition > 0
        n = config.answer_len
        # powers[k] = A^k: powers[k][s, g] = P(walk from s is at g after k steps)
        powers = [torch.eye(config.nodes, dtype=torch.float64)]
        for _ in range(n):
            powers.append(powers[-1] @ self.transition)
        self.powers = torch.stack(powers)  # (n+1, N, N)

    @property
    def vocab_size(self) -> int:
        return self.config.nodes

    @property
    def seq_len(self) -> int:
        return PROMPT_LEN + self.config.answer_len

    def prompt_splits(self, heldout_fraction: float, val_fraction: float, seed: int) -> dict[str, Tensor]:
        """Disjoint (start, goal) pairs (K, 2) for "train", "val" and "test" ("heldout"), a fixed random
        partition (by `seed`) of the pairs a walk of n steps can join."""
        if not (0 <= heldout_fraction and 0 <= val_fraction and heldout_fraction + val_fraction < 1):
            raise ValueError(f"heldout_fraction={heldout_fraction} and val_fraction={val_fraction} must be >= 0 "
                             "and sum to less than 1")
        pairs = (self.powers[-1] > 0).nonzero()  # (K, 2), sorted
        pairs = pairs[torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))]
        n_test, n_val = round(heldout_fraction * len(pairs)), round(val_fraction * len(pairs))
        return {"test": pairs[:n_test], "val": pairs[n_test:n_test + n_val], "train": pairs[n_test + n_val:]}

    def prompt_weights(self, pairs: Tensor) -> Tensor:
        """(K,) probability of each (start, goal) pair under `sample_prompts` (start uniform)."""
        return self.powers[-1][pairs[:, 0], pairs[:, 1]] / self.config.nodes

    def sample_prompts(self, num: int, generator: torch.Generator | None = None, pairs: Tensor | None = None) -> Tensor:
        """(num, 2) [start, goal]: start uniform, goal from the n-step endpoint distribution; with
        `pairs` (K, 2), the same distribution restricted to those pairs."""
        if pairs is not None:
            if len(pairs) == 0:
                raise ValueError("no (start, goal) pairs to draw prompts from; lower heldout_fraction/val_fraction")
            index = torch.multinomial(self.prompt_weights(pairs), num, replacement=True, generator=generator)
            return pairs[index].clone()
        start = torch.randint(self.config.nodes, (num,), generator=generator)
        goal = torch.multinomial(self.powers[-1][start], 1, generator=generator).squeeze(1)
        return torch.stack([start, goal], dim=1)

    def sample_answers(self, prompts: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(num, n) walks from the chain conditioned on ending at the goal after exactly n steps."""
        n = self.config.answer_len
        node = prompts[:, 0]
        goal = prompts[:, 1]
        answer = torch.empty(prompts.shape[0], n, dtype=torch.long)
        for t in range(1, n + 1):
            # P(a_t = s | a_{t-1}, goal) is proportional to A[a_{t-1}, s] * A^(n-t)[s, goal]
            weights = self.transition[node] * self.powers[n - t][:, goal].T
            node = torch.multinomial(weights, 1, generator=generator).squeeze(1)
            answer[:, t - 1] = node
        return answer

    def sample(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """(num, 2 + n) full sequences [start, goal, answer]."""
        prompts = self.sample_prompts(num, generator)
        return torch.cat([prompts, self.sample_answers(prompts, generator)], dim=1)

    def check(self, tokens: Tensor) -> Tensor:
        """(B,) bool: the answer is a walk along edges from start that ends at goal."""
        tokens = tokens.long()
        nodes = self.config.nodes
        valid_ids = ((tokens >= 0) & (tokens < nodes)).all(dim=1)
        safe = tokens.clamp(0, nodes - 1)
        walk = torch.cat([safe[:, :1], safe[:, PROMPT_LEN:]], dim=1)  # start, a_1..a_n
        steps_ok = self.edges[walk[:, :-1], walk[:, 1:]].all(dim=1)
        return valid_ids & steps_ok & (safe[:, -1] == safe[:, 1])
