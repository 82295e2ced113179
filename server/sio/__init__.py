"""Socket.IO: the server with iofleet's guards (`server`) and its tokens (`auth`), room
state (`rooms`), room broadcasts encoded once (`broadcast`), and the managers that reach
other nodes (`cluster`). Hands encoded packets to `server.eio`, never bytes."""
