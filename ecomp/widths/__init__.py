"""Searching a parent's per-group widths (EagleEye, ABCPruner, MetaPruning style).

A *candidate* is a keep fraction per prunable group of the parent (per layer on a chain, per
channel group tied by residual additions on a ResNet), materialised by L1-ranked pruning of the
parent exactly as ``method=l1_prune`` selects units (:mod:`ecomp.widths.space`). A MACs budget
relative to the parent's is met by repair or rejection, never by luck. Candidates are scored
cheaply by a plug-in score (:mod:`ecomp.widths.scores`, one module each) and searched by the
operators of :mod:`ecomp.widths.operators` (the paper's roulette, single-cut crossover and
multiplicative mutation, carried over to keep vectors; the bee colony's moves). The methods
``random_search``, ``evolve_widths`` and ``bee_colony`` (:mod:`ecomp.methods`) drive them; nothing
here knows Hydra or MLflow.
"""
