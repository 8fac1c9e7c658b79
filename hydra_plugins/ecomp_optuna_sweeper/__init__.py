"""EComp's Optuna sweeper for Hydra (``hydra/sweeper=optuna``); see ``sweeper.py``."""
