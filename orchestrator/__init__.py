"""The orchestrator (installed as splitnn.orchestrator): configs, the trainer that
walks the schedule across workers, checkpoints, outputs, and the `splitnn` CLI."""
