"""The orchestrator: runs jobs through the core's state machine using the adapters."""
