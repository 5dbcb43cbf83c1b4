// Helpers for driving the sessionactors gateway with the official socket.io-client 4.x.
// Every wait is on a condition with a deadline; nothing sleeps to synchronise.
import { io } from "socket.io-client";

export const NOT_ATTACHED = { error: "Not attached to a session; send initialize first", error_code: 400 };

export const msg = (content) => ({ action: "message", args: { content } });

export const isEvent = (f) => f !== null && typeof f === "object" && Number.isInteger(f.id) && !f.status_update;

/** Poll `predicate` every 10 ms until it returns something truthy, or fail after `timeout` ms. */
export async function waitFor(predicate, what, timeout = 10000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** One browser tab: its own Engine.IO connection (forceNew), recording every oh_event. */
export class Tab {
  constructor(url, name, options = {}) {
    this.name = name;
    this.frames = [];
    this.socket = io(url, { reconnection: false, forceNew: true, timeout: 10000, ...options });
    this.socket.on("oh_event", (frame) => this.frames.push(frame));
    this.disconnected = false;
    this.transports = []; // the transport the connection opened on, then each upgrade
    this.socket.io.on("open", () => {
      const engine = this.socket.io.engine;
      this.transports.push(engine.transport.name);
      engine.on("upgrade", (transport) => this.transports.push(transport.name));
    });
    this.socket.on("disconnect", () => {
      this.disconnected = true;
    });
  }

  /** Resolves once connected; `initialTransport` is the transport the connection opened on. */
  async ready() {
    await new Promise((resolve, reject) => {
      if (this.socket.connected) return resolve();
      this.socket.once("connect", resolve);
      this.socket.once("connect_error", (err) => reject(new Error(`${this.name}: connect_error ${err.message}`)));
    });
    this.initialTransport = this.transports[0];
    return this;
  }

  transport() {
    return this.socket.io.engine.transport.name;
  }

  send(payload) {
    this.socket.emit("oh_action", payload);
  }

  events() {
    return this.frames.filter(isEvent);
  }

  errors() {
    return this.frames.filter((f) => f && typeof f === "object" && "error" in f);
  }

  async waitFrames(predicate, what, timeout) {
    return waitFor(() => predicate(this.frames), `${this.name}: ${what}`, timeout);
  }

  async waitEvents(n, timeout) {
    await waitFor(() => this.events().length >= n, `${this.name}: ${n} events`, timeout);
    return this.events();
  }

  /** Send INIT and return its answer: the ok frame or the error frame. */
  async init(fields = {}) {
    const before = this.frames.length;
    this.send({ action: "initialize", args: {}, ...fields });
    return this.waitFrames(
      (fs) => fs.slice(before).find((f) => f && (f.status === "ok" || "error" in f)),
      "INIT answer",
    );
  }

  close() {
    this.socket.disconnect();
  }
}

export async function openTab(url, name, options) {
  return new Tab(url, name, options).ready();
}

/** GET a REST resource with the session token; returns [status, body]. */
export async function rest(url, path, token) {
  const response = await fetch(url + path, { headers: { Authorization: `Bearer ${token}` } });
  return [response.status, await response.json()];
}

/** Run `main(url)` with a global deadline; print its result as JSON; exit non-zero on failure. */
export function run(main, deadlineMs = 25000) {
  const url = process.argv[2];
  if (!url) {
    console.error("usage: node <script> <daemon url> [scenario]");
    process.exit(2);
  }
  const timer = setTimeout(() => {
    console.error(`deadline of ${deadlineMs} ms exceeded`);
    process.exit(3);
  }, deadlineMs);
  main(url, process.argv.slice(3))
    .then((result) => {
      clearTimeout(timer);
      process.stdout.write(JSON.stringify(result) + "\n");
      process.exit(0);
    })
    .catch((err) => {
      console.error(err && err.stack ? err.stack : String(err));
      process.exit(1);
    });
}
