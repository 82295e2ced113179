"""Connections and bytes: the public listener's HTTP head sniffer (`ws_accept`), the
RFC 6455 WebSocket transport below aiohttp (`ws_transport`) and Redis connections by
topology (`redis_topology`). Nothing here knows Engine.IO or Socket.IO."""
