"""Agent token rotation (docs/architecture.md §5): re-run the bootstrap, verify the old token is dead.

Per agent, a journaled state machine::

    PREFLIGHT -> TOKEN_ISSUED -> BOOTSTRAPPED -> REREGISTERED -> OLD_REVOKED -> DONE
                 (or FAILED; an unused install token is revoked either way)

Modules, from the edge inwards:

* ``rows``      the panel's ``agents`` and server tables (the only SQL on agents);
* ``tokens``    single-use install tokens: ``sql`` or ``command`` provider;
* ``remote``    SSH to the agent server (the one engine module that imports paramiko);
* ``commands``  the profile's commands (token provider, checks): argv, secret on stdin;
* ``signing``   a heartbeat signed with a token, in the reference panel's scheme;
* ``tokencheck`` is the old token dead? asked with the new token first (a positive control);
* ``journal``   one journal file per agent under ``journal_dir/agents/``;
* ``rotation``  the state machine, several agents with bounded parallelism;
* ``outcome``   what a run reports per agent: rotated, unverified ("could not verify"), failed;
* ``recovery``  ``status`` and ``recover`` for agent rotations a crash left unfinished;
* ``plan``, ``probe``  read-only: what a rotation would touch; does the profile fit the panel.

What the panel must do for all this is written in docs/agents-contract.md.

Tokens (old agent token, install token) live only in memory and in the 0600
journal of an unfinished rotation; events, results, logs and exception
messages name them by fingerprint (first 16 hex of SHA-256), and every token a
run learns (the new one included) is hidden by its exact value from whatever
it emits.
"""
