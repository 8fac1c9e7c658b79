"""EComp: evolutionary compression of trained feed-forward networks.

The algorithm modules (``initialiser``, ``population``, ``similarity``,
``fitness``, ``selection``, ``recombination``, ``mutation``, ``evolution``)
know nothing of Hydra or MLflow; ``config``, ``tracking`` and ``pipeline``
connect them to the experiment tooling.
"""

__version__ = "0.1.0"
