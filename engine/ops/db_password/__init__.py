"""``rotate-db-password``: give the panel's database login(s) a new password.

Modules: ``accounts`` (every account the old password opens, and the route to each),
``journal`` (the write-ahead record of an unfinished rotation), ``rotation`` (the
preflight, the journaled state machine and its recovery).
"""
