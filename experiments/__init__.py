"""Scripts that turn tracked EComp runs into the paper's figures and tables."""
