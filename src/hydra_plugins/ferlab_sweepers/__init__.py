"""ferlab's Hydra sweeper (`hydra/sweeper=ferlab`, the default of `ferlab train -m`).

Hydra only loads sweepers from the `hydra_plugins` namespace, hence this package beside `ferlab`.
"""
