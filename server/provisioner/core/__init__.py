"""The pure core: states, transitions, progress, rollback plan, retry policy, spec rules.

Nothing here performs I/O, reads a clock or imports a driver; callers pass `now` in.
"""
