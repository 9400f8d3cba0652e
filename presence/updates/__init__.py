"""3. Presence out: one reader of the ``presence`` stream per process
(``reader``), fanned out through one shared log (``deliveries``); new and
resuming connections start from a ``snapshot`` or a ``replay``.
"""
