"""The signaling / directory / rendezvous server (aiohttp)."""
