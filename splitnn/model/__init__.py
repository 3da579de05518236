"""Building the model from data, never from code: the allow-list of layers with
type-checked arguments, optimizers and their state, losses, and torch's threads."""
