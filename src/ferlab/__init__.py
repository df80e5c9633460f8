"""ferlab: Hydra-configured experiments for facial expression recognition.

`ferlab.compose_run` composes a run's config as `ferlab train` would (imported on first use, so importing ferlab
stays light). Module paths from before the regrouping by concern keep working for one release (`_moved`).
"""

from ferlab import _moved

_moved.install()

__all__ = ["compose_run"]


def __getattr__(name: str) -> object:
    """`ferlab.compose_run` without importing Hydra when ferlab is imported."""
    if name == "compose_run":
        from ferlab.config.runner import compose_run

        return compose_run
    raise AttributeError(f"module 'ferlab' has no attribute {name!r}")
