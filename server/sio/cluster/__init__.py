"""Socket.IO across nodes: the Redis fan-out manager (`fanout`), connection state
recovery on top of it (`recovery`) and fleet queries (`fleet_query`)."""
