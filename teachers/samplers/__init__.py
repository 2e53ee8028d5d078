"""Reference multi-step samplers (plain torch): the shared loop in base.py, one file per reveal rule."""
