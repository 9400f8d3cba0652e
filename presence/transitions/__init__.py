"""2. Transitions: heartbeats become ONLINE and OFFLINE, atomically, in Lua.

``scripts`` holds the Lua and the one way of calling it; ``sweeper`` publishes
OFFLINE at deadlines, ``keyspace`` at once for deleted keys.
"""
