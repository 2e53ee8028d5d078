"""Hidden Markov ground-truth source with exact likelihoods, conditionals and pair statistics.

A latent state chain s_1..s_L (initial distribution `initial`, `transition` [S, S]) emits one
token per position (`emission` [S, V]). The first-order Markov chain is the special case with
the identity emission (one token per state, V = S). Everything exact is computed in float64:

- `log_prob`        forward algorithm
- `conditionals`    p(x_i | all other revealed tokens) by forward-backward over hidden states
- `pair_distribution(d)`  P(x_i = a, x_{i+d} = b) averaged over positions i
- `in_support`      whether the unsmoothed (sparse) source could have produced a sequence

Smoothing mixes a small uniform mass into every transition and emission so that any sequence
has non-zero probability and gen NLL stays finite for any sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SourceConfig:
    seed: int = 0
    hidden_states: int = 24
    vocab_size: int = 24
    seq_len: int = 32
    successors: int = 3  # non-zero transitions per state before smoothing
    emissions_per_state: int | None = None  # None: identity emission, the first-order chain
    smoothing: float = 0.01  # uniform mass mixed into every row of transition and emission
    weight_exponent: float = 1.0  # non-zero weights are (u + 0.25) ** exponent: larger is more peaked,
    # so the hidden state persists and tokens far apart stay dependent

    def validate(self) -> None:
        if self.vocab_size < 2 or self.hidden_states < 1:
            raise ValueError(f"vocab_size must be >= 2 and hidden_states >= 1, got vocab_size={self.vocab_size}, "
                             f"hidden_states={self.hidden_states}")
        if self.emissions_per_state is None and self.hidden_states != self.vocab_size:
            raise ValueError(
                f"a first-order chain (emissions_per_state=null) needs hidden_states == vocab_size, "
                f"got {self.hidden_states} and {self.vocab_size}; set data.hidden_states={self.vocab_size} "
                "or give data.emissions_per_state"
            )
        if not 1 <= self.successors <= self.hidden_states:
            raise ValueError(f"successors must be in [1, hidden_states={self.hidden_states}], got {self.successors}")
        if self.emissions_per_state is not None and not 1 <= self.emissions_per_state <= self.vocab_size:
            raise ValueError(
                f"emissions_per_state must be in [1, vocab_size={self.vocab_size}], got {self.emissions_per_state}"
            )
        if not 0.0 < self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in (0, 1) so every sequence has finite NLL, got {self.smoothing}")
        if self.weight_exponent <= 0:
            raise ValueError(f"weight_exponent must be > 0, got {self.weight_exponent}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {self.seq_len}")


def _sparse_rows(rows: int, cols: int, nonzero: int, generator: torch.Generator, exponent: float = 1.0) -> Tensor:
    """Row-stochastic [rows, cols] matrix with `nonzero` random entries per row, weights (u + 0.25) ** exponent."""
    probs = torch.zeros(rows, cols, dtype=torch.float64)
    for r in range(rows):
        cols_r = torch.randperm(cols, generator=generator)[:nonzero]
        weights = (torch.rand(nonzero, generator=generator, dtype=torch.float64) + 0.25) ** exponent
        probs[r, cols_r] = weights / weights.sum()
    return probs


def _stationary(transition: Tensor) -> Tensor:
    dist = torch.full((transition.shape[0],), 1.0 / transition.shape[0], dtype=torch.float64)
    for _ in range(10_000):
        nxt = dist @ transition
        if torch.allclose(nxt, dist, atol=1e-15, rtol=0):
            break
        dist = nxt
    return nxt / nxt.sum()


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(1e-300).log()).sum(-1)


class HiddenMarkovSource:
    """Exact hidden Markov source; `HiddenMarkovSource.random(SourceConfig(...))` builds the default."""

    def __init__(
        self,
        initial: Tensor,
        transition: Tensor,
        emission: Tensor,
        seq_len: int,
        transition_support: Tensor | None = None,
        emission_support: Tensor | None = None,
    ) -> None:
        self.initial = initial.to(torch.float64)  # (S,)
        self.transition = transition.to(torch.float64)  # (S, S)
        self.emission = emission.to(torch.float64)  # (S, V)
        self.seq_len = seq_len
        self.transition_support = transition > 0 if transition_support is None else transition_support
        self.emission_support = emission > 0 if emission_support is None else emission_support
        self.identity_emission = emission.shape[0] == emission.shape[1] and torch.equal(
            emission, torch.eye(emission.shape[0], dtype=emission.dtype)
        )

    @classmethod
    def random(cls, config: SourceConfig) -> "HiddenMarkovSource":
        config.validate()
        gen = torch.Generator().manual_seed(config.seed)
        S, V, eps = config.hidden_states, config.vocab_size, config.smoothing
        sparse_t = _sparse_rows(S, S, config.successors, gen, config.weight_exponent)
        transition = (1 - eps) * sparse_t + eps / S
        if config.emissions_per_state is None:
            sparse_e = torch.eye(S, dtype=torch.float64)
            emission = sparse_e
        else:
            sparse_e = _sparse_rows(S, V, config.emissions_per_state, gen, config.weight_exponent)
            emission = (1 - eps) * sparse_e + eps / V
        initial = _stationary(transition)  # start in equilibrium: every position has the same marginal
        return cls(initial, transition, emission, config.seq_len, sparse_t > 0, sparse_e > 0)

    @property
    def num_states(self) -> int:
        return self.transition.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.emission.shape[1]

    # ----- sampling -------------------------------------------------------------------------
    def sample(self, num: int, generator: torch.Generator | None = None, length: int | None = None) -> Tensor:
        """Draw `num` sequences (num, length) of token ids."""
        length = self.seq_len if length is None else length
        states = torch.empty(num, length, dtype=torch.long)
        states[:, 0] = torch.multinomial(self.initial.expand(num, -1), 1, generator=generator).squeeze(1)
        for t in range(1, length):
            states[:, t] = torch.multinomial(self.transition[states[:, t - 1]], 1, generator=generator).squeeze(1)
        if self.identity_emission:
            return states
        flat = torch.multinomial(self.emission[states.reshape(-1)], 1, generator=generator)
        return flat.view(num, length)

    # ----- exact likelihood -----------------------------------------------------------------
    def log_prob(self, tokens: Tensor) -> Tensor:
        """log p(tokens) per sequence, float64 (B,), by the scaled forward algorithm."""
        tokens = tokens.long()
        emit = self.emission.T  # (V, S)
        alpha = self.initial * emit[tokens[:, 0]]  # (B, S)
        norm = alpha.sum(-1)
        logp = norm.log()
        alpha = alpha / norm[:, None]
        for t in range(1, tokens.shape[1]):
            alpha = (alpha @ self.transition) * emit[tokens[:, t]]
            norm = alpha.sum(-1)
            logp = logp + norm.log()
            alpha = alpha / norm[:, None]
        return logp

    def in_support(self, tokens: Tensor) -> Tensor:
        """True where the unsmoothed sparse source can produce the sequence (B,) bool."""
        tokens = tokens.long()
        trans = self.transition_support.to(torch.float64)
        emit = self.emission_support.T.to(torch.float64)  # (V, S)
        reach = (self.initial > 0).to(torch.float64) * emit[tokens[:, 0]]
        for t in range(1, tokens.shape[1]):
            reach = ((reach @ trans) > 0).to(torch.float64) * emit[tokens[:, t]]
        return reach.sum(-1) > 0

    # ----- exact conditionals (the oracle denoiser) --------------------------------------------
    def conditionals(self, tokens: Tensor, revealed: Tensor) -> Tensor:
        """p(x_i = v | x_j for all revealed j != i) for every position, float64 (B, L, V).

        Forward messages are taken *before* the evidence at i and backward messages after it,
        so each position's distribution conditions on every other revealed token but not on itself.
        """
        B, L = tokens.shape
        emit = self.emission.T  # (V, S)
        evidence = torch.where(
            revealed[..., None], emit[tokens.clamp(0, self.vocab_size - 1)], torch.ones((), dtype=torch.float64)
        )  # (B, L, S)
        prior = torch.empty(B, L, self.num_states, dtype=torch.float64)
        a = self.initial.expand(B, -1)
        for t in range(L):
            prior[:, t] = a
            a = a * evidence[:, t]
            a = a / a.sum(-1, keepdim=True)
            a = a @ self.transition
        beta = torch.ones(B, L, self.num_states, dtype=torch.float64)
        for t in range(L - 2, -1, -1):
            b = (evidence[:, t + 1] * beta[:, t + 1]) @ self.transition.T
            beta[:, t] = b / b.sum(-1, keepdim=True)
        posterior = prior * beta
        posterior = posterior / posterior.sum(-1, keepdim=True)
        return posterior @ self.emission  # (B, L, V)

    # ----- exact distribution-level statistics ---------------------------------------------------
    def state_marginals(self) -> Tensor:
        """P(s_t) for t = 0..L-1, (L, S)."""
        marg = [self.initial]
        for _ in range(self.seq_len - 1):
            marg.append(marg[-1] @ self.transition)
        return torch.stack(marg)

    def pair_distribution(self, distance: int) -> Tensor:
        """P(x_i = a, x_{i+d} = b) averaged over i = 0..L-1-d, float64 (V, V)."""
        if not 1 <= distance < self.seq_len:
            raise ValueError(f"pair distance must be in [1, seq_len-1={self.seq_len - 1}], got {distance}")
        step = torch.linalg.matrix_power(self.transition, distance)
        marg = self.state_marginals()[: self.seq_len - distance].mean(0)  # linear in the marginal
        joint_states = marg[:, None] * step  # (S, S)
        return self.emission.T @ joint_states @ self.emission

    def unigram_distribution(self) -> Tensor:
        return self.state_marginals().mean(0) @ self.emission

    def entropy_rate(self) -> float:
        """Asymptotic entropy rate (nats/token) of a first-order chain: sum_s mu_s H(A_s)."""
        if not self.identity_emission:
            raise ValueError(
                "a hidden Markov source has no closed-form entropy rate; use entropy_per_token(), "
                "which estimates it from exact log-probabilities of samples"
            )
        return float((_stationary(self.transition) * _entropy(self.transition)).sum())

    def entropy_per_token(self, num_samples: int = 20_000, seed: int = 1234) -> tuple[float, float]:
        """H(x_1..x_L) / L in nats: what true sequences score as gen NLL on average.

        Exact for a first-order chain (stderr 0). For a hidden source it is a Monte Carlo mean of
        exact log-probabilities of `num_samples` true sequences, returned with its standard error.
        """
        L = self.seq_len
        if self.identity_emission:
            marg = self.state_marginals()
            total = _entropy(self.initial) + (marg[:-1] * _entropy(self.transition)).sum()
            return float(total / L), 0.0
        gen = torch.Generator().manual_seed(seed)
        nll = -self.log_prob(self.sample(num_samples, gen)) / L
        return float(nll.mean()), float(nll.std() / math.sqrt(num_samples))

    def tensors(self) -> dict[str, Tensor]:
        """The defining tensors, as written to chain.safetensors in every eval run. The supports
        (bool) mark the entries that are non-zero before smoothing (for the low-probability rate)."""
        return {"initial": self.initial, "transition": self.transition, "emission": self.emission,
                "transition_support": self.transition_support, "emission_support": self.emission_support}
