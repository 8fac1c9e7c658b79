"""Similarity measures between the parent's and a child's hidden representations.

One module per measure and one YAML in ``conf/similarity/`` naming its class in
``_target_``. The evaluator asks a measure to prepare the parent's side of a batch
once (:meth:`~ecomp.measures.base.SimilarityMeasure.prepare`) and to score a whole
population against it (:meth:`~ecomp.measures.base.SimilarityMeasure.score`); it does
not know which measure it talks to. Lower is more similar; 0 is identical.
"""

from ecomp.measures.base import SimilarityMeasure, measure_class

__all__ = ["SimilarityMeasure", "measure_class"]
