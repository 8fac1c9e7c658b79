"""``score=similarity``: minus the paper's similarity, the t-SNE KL divergence between the parent's
and the candidate's hidden representations (:class:`ecomp.measures.tsne.TSNE`, perplexity 30),
summed over every hidden layer and averaged over the held-out batches. The candidate is scored
as it is (no recalibration), as the paper's fitness scores its individuals."""

from __future__ import annotations

import torch
from torch import Tensor

from ecomp.measures.base import SimilarityMeasure
from ecomp.measures.tsne import TSNE
from ecomp.nets.structure import Structure
from ecomp.widths.scores.base import Score, ScoreData

FEATURES = "flat"          # a conv stage's maps flattened, as EComp's default (similarity.features)


class Similarity(Score):
    name = "similarity"

    def measure(self) -> SimilarityMeasure:
        return TSNE(30.0, 1e-5, self.backend)

    def __init__(self, parent: Structure, data: ScoreData, backend):
        super().__init__(parent, data, backend)
        self.m = self.measure()
        x = torch.cat(self.batches())
        self.n = data.batch_size
        self.x = x
        self.states = self.m.prepare(parent.run(x, FEATURES)[1], self.n)

    @torch.no_grad()
    def __call__(self, net: Structure, kept: list[Tensor]) -> float:
        hidden = [[a] for a in net.run(self.x, FEATURES)[1]]
        return -float(self.m.score(hidden, None, self.states, self.n).mean())


SCORE = Similarity
