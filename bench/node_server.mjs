// The Node reference for bench/fanout_bench.py: socket.io 4.8 with its Redis
// adapter, running the same app shape as server/apps/chat.py (room:join with
// a members ack, chat:message broadcast to the room with an ack, echo).
// Usage: node bench/node_server.mjs PORT REDIS_URL
import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const port = Number(process.argv[2]);
const redisUrl = process.argv[3];

const pubClient = createClient({ url: redisUrl });
const subClient = pubClient.duplicate();
await Promise.all([pubClient.connect(), subClient.connect()]);

const httpServer = createServer();
const io = new Server(httpServer, {
  adapter: createAdapter(pubClient, subClient),
  transports: ["websocket", "polling"],
  cors: { origin: [] },
});

const roomOf = (data) => (data && typeof data.room === "string" && data.room ? data.room : null);

io.on("connection", (socket) => {
  socket.data.user = "anonymous";
  socket.emit("server:hello", { node_id: "node" });
  socket.on("room:join", async (data, ack) => {
    const room = roomOf(data);
    if (!room) return typeof ack === "function" && ack({ ok: false, error: "room required" });
    socket.join(room);
    // As server/apps/chat.py: the users of at most 100 of the room's sockets, so a
    // join costs the same in a room of any size.
    const members = new Set();
    let scanned = 0;
    for (const sid of io.sockets.adapter.rooms.get(room) ?? []) {
      if (scanned++ >= 100) break;
      members.add(io.sockets.sockets.get(sid)?.data.user ?? "anonymous");
    }
    if (typeof ack === "function") ack({ ok: true, room, members: [...members].sort() });
  });
  socket.on("chat:message", (data, ack) => {
    const room = roomOf(data);
    if (!room || typeof data.text !== "string") {
      return typeof ack === "function" && ack({ ok: false, error: "room and text required" });
    }
    if (!socket.rooms.has(room)) {
      return typeof ack === "function" && ack({ ok: false, error: `join ${room} first` });
    }
    const payload = { room, text: data.text, from: socket.data.user, ts: Date.now() };
    io.to(room).emit("chat:message", payload);
    if (typeof ack === "function") ack({ ok: true });
  });
  socket.on("echo", (data, ack) => {
    if (typeof ack === "function") ack(data);
  });
});

httpServer.listen(port, "127.0.0.1");
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    pubClient.quit().catch(() => {});
    subClient.quit().catch(() => {});
    process.exit(0);
  });
}
