"""Pyodide-only adapters (``js``, ``pyodide.ffi``): the tab's node and ``open_mesh`` (``tab``), the
page's WebSocket and DataChannel links (``links``), its RTCPeerConnection backend (``rtc``) and the
WebCrypto ``CryptoProvider`` (``webcrypto``). Imported only in the page, never by the core."""
