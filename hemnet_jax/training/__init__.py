"""Training: config schema, state, train and eval steps, the loop, evaluation, metrics, sharding, checkpoints."""
