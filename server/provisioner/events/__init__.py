"""The event hub: ordered, resumable delivery of committed job events to watchers."""
