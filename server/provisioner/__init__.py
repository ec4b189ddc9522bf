"""provisioning-orchestrator: provisions departments end to end and rolls them back cleanly."""
