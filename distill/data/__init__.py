"""LightningDataModules: ground-truth sources, prompt files, text corpora and self-generated teacher data, as resumable streams."""
