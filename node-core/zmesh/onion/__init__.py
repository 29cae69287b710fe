"""Onion services (docs/onion-services.md): ``.mesh`` addresses (``address``), Tor's per-period key
blinding (``blinding`` over ``edwards``), descriptors the store can check but not read
(``descriptor``), the client side of the signal server's descriptor store (``directory``), and
introduction and rendezvous: the relay messages (``wire``), the end-to-end handshake
(``introduce``) and the ends' circuits (``endpoints``)."""
