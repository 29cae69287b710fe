"""What a native (CPython) node adds to the core: the ``cryptography``-based ``CryptoProvider``
(``zmesh.native.crypto``). The page never loads this package; the pure core never imports it."""
