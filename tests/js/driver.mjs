// Drives stock socket.io-client sockets for the Python tests.
// Commands arrive as JSON lines on stdin; what the sockets see leaves as JSON
// lines on stdout. One process can hold many named clients, so a test can open
// dozens of real browsers' worth of connections without dozens of Node processes.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const sockets = new Map();

function out(message) {
  process.stdout.write(JSON.stringify({ ...message, t: Date.now() / 1000 }) + "\n");
}

function open({ client, url, opts }) {
  // withCredentials: under Node the client keeps cookies only when asked, while
  // a browser tab keeps them by default; balancer stickiness cookies need them.
  const socket = io(url, { forceNew: true, withCredentials: true, ...opts });
  sockets.set(client, socket);
  const engineInfo = () => ({
    engine_sid: socket.io.engine ? socket.io.engine.id : null,
    transport: socket.io.engine ? socket.io.engine.transport.name : null,
  });
  socket.on("connect", () =>
    out({ client, type: "connect", sid: socket.id, recovered: socket.recovered, ...engineInfo() }),
  );
  socket.on("connect_error", (err) =>
    out({ client, type: "connect_error", message: err.message, data: err.data ?? null }),
  );
  socket.on("disconnect", (reason) => out({ client, type: "disconnect", reason }));
  socket.io.on("reconnect_attempt", (attempt) => out({ client, type: "reconnect_attempt", attempt }));
  socket.io.on("open", () => {
    socket.io.engine.on("upgrade", (transport) =>
      out({ client, type: "upgrade", transport: transport.name }),
    );
  });
  socket.onAny((event, ...args) => out({ client, type: "event", event, args }));
}

function emit({ client, event, data, ack }) {
  const socket = sockets.get(client);
  if (!socket) return out({ client, type: "error", message: `no client ${client}` });
  if (ack === undefined || ack === null) {
    socket.emit(event, data);
    return;
  }
  socket.timeout(10000).emit(event, data, (err, response) =>
    out({ client, type: "ack", id: ack, error: err ? String(err.message || err) : null, response }),
  );
}

function close({ client }) {
  const socket = sockets.get(client);
  if (socket) socket.close();
  sockets.delete(client);
  out({ client, type: "closed" });
}

// Drop a client's transport as a network failure would: the manager reconnects by
// itself (connection state recovery). With `url`, the reconnect goes there instead.
function drop({ client, url }) {
  const socket = sockets.get(client);
  if (!socket) return out({ client, type: "error", message: `no client ${client}` });
  if (url) socket.io.uri = url;
  socket.io.engine.close();
}

// Where the client reconnects next time, without dropping it now.
function retarget({ client, url }) {
  const socket = sockets.get(client);
  if (!socket) return out({ client, type: "error", message: `no client ${client}` });
  socket.io.uri = url;
}

// The client's recovery session (its private `_pid` and `_lastOffset`), reported and,
// when given, overwritten: tests forge a reconnect with a pid that is not its own.
function session({ client, pid, offset }) {
  const socket = sockets.get(client);
  if (!socket) return out({ client, type: "error", message: `no client ${client}` });
  if (pid !== undefined && pid !== null) socket._pid = pid;
  if (offset !== undefined && offset !== null) socket._lastOffset = offset;
  out({ client, type: "session", pid: socket._pid ?? null, offset: socket._lastOffset ?? null });
}

const handlers = { open, emit, close, drop, retarget, session };
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  if (command.op === "exit") {
    for (const socket of sockets.values()) socket.close();
    process.exit(0);
  }
  const handler = handlers[command.op];
  if (handler) handler(command);
  else out({ type: "error", message: `unknown op ${command.op}` });
});
lines.on("close", () => process.exit(0));
out({ type: "ready" });
