"""3. Presence out: one reader of the ``presence`` stream per process
(``reader``), fanned out through one shared log (``delivery_log``); rooms
read by one reader too (``room_reader``) and routed to scoped streams
(``scoped``); every connection registered in ``connections``. New and
resuming connections start from a ``snapshot`` or a ``replay``; scoped ones
in one call (``scoped_start``).
"""
