"""Compression methods: EComp and the baselines it is measured against.

Every method is one module here and one YAML in ``conf/method/`` whose ``_target_``
names its class. A method turns a :class:`~ecomp.methods.base.Problem` into an
:class:`~ecomp.methods.base.Outcome` (one network); ``ecomp.app.pipeline`` measures and
tracks every outcome the same way (:mod:`ecomp.methods.metrics`).
"""

from ecomp.methods.base import Method, Outcome, Problem, method_class

__all__ = ["Method", "Outcome", "Problem", "method_class"]
