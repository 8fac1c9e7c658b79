"""``score=cka``: minus the sum over hidden layers of ``1 - linear CKA`` between the parent's and the
candidate's representations (:class:`ecomp.measures.cka.LinearCKA`), averaged over the held-out
batches; the candidate as it is."""

from __future__ import annotations

from ecomp.measures.base import SimilarityMeasure
from ecomp.measures.cka import LinearCKA
from ecomp.widths.scores.similarity import Similarity


class CKA(Similarity):
    name = "cka"

    def measure(self) -> SimilarityMeasure:
        return LinearCKA(self.backend)


SCORE = CKA
