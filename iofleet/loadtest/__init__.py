"""`iofleet loadtest`: Artillery-shaped scenarios, a lean Socket.IO load engine, reports."""
