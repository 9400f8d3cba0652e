"""1. Heartbeats in: the clients this process holds, heartbeated into the
``heartbeat`` stream (``held``, ``publisher``), and the consumer group that
applies every server's heartbeats through the transition scripts (``consumer``).
"""
