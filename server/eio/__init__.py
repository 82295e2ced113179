"""Engine.IO: iofleet's own server, which python-socketio builds (`engine`), a
connection's socket and its bounded outbound queue (`socket`, `packet_queue`), the
heartbeat wheel (`heartbeat`), aiohttp's WebSocket for permessage-deflate
(`deflate_ws`), and eager task steps (`eager`).
Hands bytes to `server.net`; knows nothing of Socket.IO packets or rooms."""
