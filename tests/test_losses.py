"""Each loss of distill/objectives/losses.py against a plain formula written out by hand, and the
case where no position counts (the loss is 0, not NaN)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.objectives.losses import (already_correct, certainty_loss, forward_kl, leave_one_out_mean, masked_ce,
                                       multi_pass_forward_kl, reinforce_loss, transition_ce)


def test_masked_ce_is_mean_cross_entropy_over_masked_positions():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))
    tokens = torch.tensor([[0, 0, 1]])
    noise = torch.tensor([[True, False, True]])
    expected = -(torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.8))) / 2
    assert masked_ce(logits, tokens, noise).item() == pytest.approx(expected.item(), abs=1e-6)
    assert masked_ce(logits, tokens, torch.zeros_like(noise)).item() == 0.0


def test_masked_ce_weights_each_row_and_still_divides_by_the_masked_count():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]], [[0.25, 0.75], [0.6, 0.4]]]))
    tokens = torch.tensor([[0, 0], [1, 1]])
    noise = torch.tensor([[True, False], [True, True]])
    weight = torch.tensor([[2.0], [4.0]])  # MDLM's 1/t per row
    expected = (2 * -math.log(0.5) + 4 * -math.log(0.75) + 4 * -math.log(0.4)) / 3
    assert masked_ce(logits, tokens, noise, weight).item() == pytest.approx(expected, rel=1e-6)
    assert masked_ce(logits.half(), tokens, noise).dtype == torch.float32


def test_already_correct_is_argmax_equals_target_on_masked_positions_only():
    logits = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]]])  # argmax 0 1 2 0
    target = torch.tensor([[0, 1, 0, 0]])
    mask = torch.tensor([[True, True, True, False]])
    assert already_correct(logits, target, mask).tolist() == [[True, True, False, False]]


def test_certainty_loss_is_ce_plus_beta_times_entropy_on_correct_tokens():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=gen) * 3
    target = torch.randint(4, (3, 5), generator=gen)
    mask = torch.rand(3, 5, generator=gen) < 0.7
    out = certainty_loss(logits, target, mask, beta=2.0, tau=0.5)
    ce = [F.cross_entropy(logits[b, i], target[b, i]).item() for b in range(3) for i in range(5) if mask[b, i]]
    ent = []
    for b in range(3):
        for i in range(5):
            if mask[b, i] and logits[b, i].argmax() == target[b, i]:
                p = torch.softmax(logits[b, i] / 0.5, -1)
                ent.append(-(p * p.log()).sum().item())
    assert ent, "the draw should have some correct masked tokens"
    assert out.ce.item() == pytest.approx(sum(ce) / len(ce), rel=1e-5)
    assert out.entropy.item() == pytest.approx(sum(ent) / len(ent), rel=1e-5)
    assert out.loss.item() == pytest.approx(sum(ce) / len(ce) + 2.0 * sum(ent) / len(ent), rel=1e-5)
    assert out.correct.item() == pytest.approx(len(ent) / len(ce))


def test_certainty_loss_is_zero_when_nothing_is_masked():
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    out = certainty_loss(logits, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool), 2.0, 0.5)
    assert [out.loss.item(), out.ce.item(), out.entropy.item(), out.correct.item()] == [0.0, 0.0, 0.0, 0.0]


def test_forward_kl_matches_the_reference_formula():
    g = torch.Generator().manual_seed(0)
    target, logits = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    reference = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(target, -1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(forward_kl(target, logits), reference, atol=1e-6)
    assert forward_kl(target, target).abs().max().item() < 1e-6


def test_multi_pass_forward_kl_averages_over_every_counted_position_of_every_pass():
    g = torch.Generator().manual_seed(0)
    targets = [torch.randn(2, 3, 4, generator=g), torch.randn(1, 3, 4, generator=g)]  # the last chunk is shorter
    logits = [torch.randn(2, 3, 4, generator=g), torch.randn(1, 3, 4, generator=g)]
    masks = [torch.tensor([[True, False, True], [False, False, True]]), torch.tensor([[True, True, False]])]

    def kl(t, q):  # sum_v p_v (log p_v - log q_v), written out
        p, r = torch.softmax(t, -1), torch.softmax(q, -1)
        return sum(p[v].item() * (math.log(p[v].item()) - math.log(r[v].item())) for v in range(len(p)))

    per_pass = [[kl(t[b, i], q[b, i]) for b in range(len(m)) for i in range(3) if m[b, i]]
                for t, q, m in zip(targets, logits, masks)]
    loss, means = multi_pass_forward_kl(targets, logits, masks)
    assert loss.item() == pytest.approx(sum(map(sum, per_pass)) / 5, rel=1e-5)
    assert [m.item() for m in means] == pytest.approx([sum(k) / len(k) for k in per_pass], rel=1e-5)
    empty = [torch.zeros(2, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool)]
    loss, means = multi_pass_forward_kl(targets, logits, empty)
    assert loss.item() == 0.0 and means == [None, None]


def test_transition_ce_is_minus_log_of_the_students_one_step_transition():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]]))
    reveal = torch.tensor(0.25)
    target = torch.tensor([[1, 0, 7, 1]])  # 7: no token was revealed there, the value is never read
    revealed = torch.tensor([[True, True, False, False]])
    masked = torch.tensor([[True, True, True, False]])  # position 3 was already shown: not counted
    # revealed: -log(r * q_v); stayed masked: -log(1 - r)
    expected = (-math.log(0.25 * 0.5) - math.log(0.25 * 0.9) - math.log(0.75)) / 3
    assert transition_ce(logits, reveal, target, revealed, masked).item() == pytest.approx(expected, rel=1e-6)
    nothing = torch.zeros_like(masked)
    assert transition_ce(logits, reveal, target, nothing, nothing).item() == 0.0


def test_leave_one_out_mean_is_the_mean_of_the_other_rows():
    values = torch.tensor([[1.0, 4.0], [2.0, 0.0], [6.0, 2.0]])
    assert leave_one_out_mean(values).tolist() == [[4.0, 1.0], [3.5, 3.0], [1.5, 2.0]]
    assert leave_one_out_mean(torch.tensor([5.0])).tolist() == [0.0]  # no other row: no baseline


def test_reinforce_loss_matches_reward_to_go_with_leave_one_out_baselines():
    kl = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]], requires_grad=True)
    log_pi = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]], requires_grad=True)
    grid_log_prob = torch.tensor([-0.4, -1.1], requires_grad=True)
    # rewards-to-go: row 0 (3.5, 2.5, 0.5), row 1 (4.0, 4.0, 3.0); with two rows the baseline is the other row
    to_go = [[3.5, 2.5, 0.5], [4.0, 4.0, 3.0]]
    advantage = [[to_go[b][i] - to_go[1 - b][i] for i in range(3)] for b in range(2)]
    steps = sum(advantage[b][i] * log_pi[b, i].item() for b in range(2) for i in range(3)) / 2
    grid = sum((to_go[b][0] - to_go[1 - b][0]) * grid_log_prob[b].item() for b in range(2)) / 2
    loss = reinforce_loss(kl, log_pi, grid_log_prob)
    assert loss.item() == pytest.approx(steps + grid, rel=1e-6)
    loss.backward()
    assert torch.allclose(log_pi.grad, torch.tensor(advantage) / 2)
    assert kl.grad is None or not kl.grad.any()  # the KL is a reward, never differentiated
    zero = torch.zeros(2, 3)
    assert reinforce_loss(zero, log_pi.detach(), grid_log_prob.detach()).item() == 0.0  # nothing to reveal: no signal
