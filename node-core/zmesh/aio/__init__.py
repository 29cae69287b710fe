"""The asyncio glue around the sans-IO core, the same on CPython and in Pyodide: the driver that runs
a ``Node`` over real links, the ``MeshVPN`` API, transports, WebRTC setup and FEC links. Never
imports a runtime's own libraries (``js``, ``cryptography``, ``aiohttp``, ``aiortc``): those
adapters live in ``zmesh.browser``, ``zmesh.native`` and the relay.
"""
