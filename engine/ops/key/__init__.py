"""``rotate-key``: re-encrypt every stored value under a new PANEL_ENCRYPTION_KEY.

Modules, in the order a rotation uses them: ``preflight`` (read-only checks and counts,
the plan's facts), ``scan`` and ``offload`` (stage and seal the values, the crypto in a
worker process), ``rotation`` (the journaled state machine), ``verify`` (every value opens
with the key read back from disk), ``converge`` (recover: roll forward or back).
"""
