"""``rotate-incident``: after a leaked ``.env``, the database password, the key and every
agent token, in that order, each verified before the next (``rotation``)."""
