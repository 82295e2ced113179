"""Engine.IO: the server python-socketio builds (`engine`), a connection's socket and
its bounded outbound queue (`socket`, `packet_queue`), and eager task steps (`eager`).
Hands bytes to `server.net`; knows nothing of Socket.IO packets or rooms."""
