"""Ground-truth sources with exact likelihoods: the hidden Markov source (the first-order chain is its identity-emission case) and the `paths` task."""
