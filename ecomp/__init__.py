"""EComp: evolutionary compression of trained networks.

Packages, from the bottom up (each imports only those above it in this list):

* ``errors``, ``plugins``, ``timing``: error types and small utilities;
* ``nets``: the network interface and its layer kinds (``structure``, ``mlp``, ``convnet``, the
  factory ``kinds``), the populations' storage, checkpoints, datasets, a run's data, the parent, sizes;
* ``kernels``: the compute backend, the forward passes, the C kernels, the PyTorch t-SNE;
* ``measures``: the similarity measures;
* ``core``: initialiser, selection, recombination, mutation, fitness, the loop;
* ``methods``: the compression methods (EComp and the baselines);
* ``app``: the glue: config, the run specification (``spec``), pipeline, tracking, sweeps, command
  line (the only package that knows Hydra and MLflow).
"""

__version__ = "0.1.0"
