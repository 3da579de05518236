"""The training algorithm, free of transport: which owner trains when and on which
rows (schedule), and how one batch goes through the chain of stages (pipeline)."""
