"""Onion services: ``.mesh`` addresses, descriptors, introduction and rendezvous (docs/onion-services.md)."""
