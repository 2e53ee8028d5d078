"""Scoring samples: torchmetrics metrics, the benchmark of each task, the eval loop over step counts, and the tables written from it."""
