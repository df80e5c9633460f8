"""Checkpoint files and what happens when a run stops: atomic writes, weights-only loading, restore, resume,
pre-emption and Ctrl-C, the fit audit, DDP ranks stopping, `init_from`, mismatch messages."""
