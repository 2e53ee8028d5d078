"""Training objectives as LightningModules: one file per algorithm, beside the base they share and the losses they call."""
