"""4. HTTP: the SSE stream per client (``sse``), the read endpoints and health
(``routes``), tokens (``auth``), Prometheus (``metrics``), and the aiohttp
application standalone or mounted (``app``).
"""
