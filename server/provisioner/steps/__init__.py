"""Provisioning steps: one module per step backend, all behind the `Step` protocol."""
