"""The paths task: exact bridge sampling and the answer checker."""

from __future__ import annotations

import itertools

import pytest
import torch

from teachers import PathsConfig, PathsTask
from teachers.sources.paths import PROMPT_LEN


@pytest.fixture
def task() -> PathsTask:
    return PathsTask(PathsConfig(nodes=6, successors=2, answer_len=4, graph_seed=1))


def test_bridge_answers_are_valid_walks_ending_at_goal(task):
    tokens = task.sample(500, torch.Generator().manual_seed(0))
    assert tokens.shape == (500, PROMPT_LEN + 4)
    assert task.check(tokens).all()
    assert torch.equal(tokens[:, -1], tokens[:, 1])


def test_check_rejects_a_broken_edge_a_wrong_goal_and_masks(task):
    tokens = task.sample(1, torch.Generator().manual_seed(0))[0]
    start = int(tokens[0])
    non_edge = int((~task.edges[start]).nonzero()[0])
    broken = tokens.clone()
    broken[PROMPT_LEN] = non_edge
    wrong_goal = tokens.clone()
    wrong_goal[1] = (wrong_goal[1] + 1) % 6
    masked = tokens.clone()
    masked[PROMPT_LEN + 1] = 6  # the mask id
    assert task.check(torch.stack([tokens, broken, wrong_goal, masked])).tolist() == [True, False, False, False]


def test_bridge_matches_enumerated_conditional_distribution(task):
    """P(answer | start, goal) is proportional to the chain probability of the walk."""
    prompt = task.sample_prompts(1, torch.Generator().manual_seed(3))
    start, goal = int(prompt[0, 0]), int(prompt[0, 1])
    walks = torch.tensor(list(itertools.product(range(6), repeat=4)))
    full = torch.cat([torch.full((len(walks), 1), start), walks], dim=1)
    probs = task.transition[full[:, :-1], full[:, 1:]].prod(1) * (walks[:, -1] == goal)
    probs = probs / probs.sum()
    draws = task.sample_answers(prompt.expand(30_000, -1), torch.Generator().manual_seed(0))
    index = (draws * torch.tensor([216, 36, 6, 1])).sum(1)
    empirical = torch.bincount(index, minlength=6**4).double() / len(draws)
    codes = (walks * torch.tensor([216, 36, 6, 1])).sum(1)
    assert (empirical[codes] - probs).abs().max().item() < 0.01


def test_graph_seed_fixes_the_graph():
    a = PathsTask(PathsConfig(graph_seed=0))
    b = PathsTask(PathsConfig(graph_seed=0))
    c = PathsTask(PathsConfig(graph_seed=1))
    assert torch.equal(a.transition, b.transition) and not torch.equal(a.transition, c.transition)
