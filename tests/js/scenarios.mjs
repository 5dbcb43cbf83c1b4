// The wire protocol seen by the official socket.io-client 4.x.
// Usage: node scenarios.mjs <daemon url> <scenario>; prints the scenario's result as JSON on
// stdout and exits non-zero when an assertion fails (tests/test_js_client.py drives it).
import assert from "node:assert/strict";

import { NOT_ATTACHED, msg, openTab, rest, run, waitFor } from "./lib.mjs";

const ids = (events) => events.map((e) => e.id);
const statusIds = (frames) => frames.filter((f) => f.status_update).map((f) => f.id);

const scenarios = {
  /** Tab A on websocket only, tab B polling then upgraded; join by token; fan-out. */
  async tabs(url) {
    const a = await openTab(url, "A", { transports: ["websocket"] });
    const b = await openTab(url, "B"); // default transports: polling first, then upgrade
    try {
      assert.equal(a.initialTransport, "websocket");
      assert.equal(b.initialTransport, "polling");
      const okA = await a.init();
      assert.equal(okA.status, "ok");
      assert.ok(okA.token && okA.session_id);
      const okB = await b.init({ token: okA.token });
      assert.equal(okB.status, "ok");
      assert.equal(okB.session_id, okA.session_id);
      await waitFor(() => b.transport() === "websocket", "B to upgrade to websocket");
      assert.deepEqual(b.transports, ["polling", "websocket"]);
      b.send(msg("from B"));
      b.send({ action: "run", args: { command: "echo hi" } });
      b.send(msg("last"));
      const expected = [0, 1, 2, 3];
      for (const tab of [a, b]) {
        await tab.waitEvents(4);
        assert.deepEqual(ids(tab.events()), expected, `${tab.name} ids`);
      }
      // One more round trip so that a duplicate sent late would have arrived.
      a.send(msg("barrier"));
      for (const tab of [a, b]) await tab.waitEvents(5);
      assert.deepEqual(ids(a.events()), [0, 1, 2, 3, 4]);
      assert.deepEqual(a.events(), b.events(), "both tabs see the very same events");
      const [run1, obs] = [a.events()[1], a.events()[2]];
      assert.equal(run1.action, "run");
      assert.equal(obs.observation, "run");
      assert.equal(obs.cause, run1.id);
      assert.deepEqual(obs.extras, { command: "echo hi", exit_code: 0 });
      assert.deepEqual(a.errors(), []);
      assert.deepEqual(b.errors(), []);
      const [status, info] = await rest(url, `/api/sessions/${okA.session_id}`, okA.token);
      assert.equal(status, 200);
      assert.equal(info.connections, 2);
      return {
        session_id: okA.session_id,
        a_ids: ids(a.events()),
        b_ids: ids(b.events()),
        b_transports: b.transports,
        a_transport: a.transport(),
      };
    } finally {
      a.close();
      b.close();
    }
  },

  /** Events, disconnect, passivation (close_delay small), then a replay from latest_event_id. */
  async replay(url) {
    const a = await openTab(url, "A", { transports: ["websocket"] });
    const ok = await a.init();
    for (const text of ["r0", "r1", "r2"]) a.send(msg(text));
    await a.waitEvents(3);
    a.close();
    const path = `/api/sessions/${ok.session_id}`;
    let state = null;
    const deadline = Date.now() + 15000;
    for (;;) {
      const [status, info] = await rest(url, path, ok.token);
      assert.equal(status, 200);
      state = info.state;
      if (state === "passivated" && info.connections === 0) break;
      if (Date.now() > deadline) throw new Error(`session still ${state}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const b = await openTab(url, "B"); // polling then upgrade
    try {
      const again = await b.init({ token: ok.token, latest_event_id: 0 });
      assert.equal(again.status, "ok");
      assert.equal(again.session_id, ok.session_id);
      await b.waitEvents(2);
      b.send(msg("r3"));
      await b.waitEvents(3);
      assert.deepEqual(ids(b.events()), [1, 2, 3]);
      assert.deepEqual(
        b.events().map((e) => e.message),
        ["r1", "r2", "r3"],
      );
      const statuses = statusIds(b.frames);
      assert.ok(statuses.includes("STATUS$REHYDRATING"), `statuses: ${statuses}`);
      const okIndex = b.frames.indexOf(again);
      assert.ok(okIndex < b.frames.indexOf(b.events()[0]), "the ok precedes the replay");
      return { state_before: state, ids: ids(b.events()), statuses };
    } finally {
      b.close();
    }
  },

  /** An invalid token is answered to its sender alone; a third client gets nothing. */
  async invalid_token(url) {
    const owner = await openTab(url, "owner", { transports: ["websocket"] });
    const idle = await openTab(url, "idle");
    const sender = await openTab(url, "sender", { transports: ["websocket"] });
    try {
      const ok = await owner.init();
      owner.send(msg("mine"));
      await owner.waitEvents(1);
      const mark = owner.frames.length;
      const tampered = ok.token.slice(0, -4) + (ok.token.endsWith("AAAA") ? "BBBB" : "AAAA");
      const answers = [];
      for (const token of ["forged.token.value", "garbage", tampered]) {
        const answer = await sender.init({ token });
        assert.deepEqual(answer, { error: "Invalid token", error_code: 401 });
        answers.push(answer);
      }
      // barriers: each bystander asks something and waits for its own answer
      owner.send(msg("barrier"));
      idle.send(msg("barrier"));
      await owner.waitEvents(2);
      await idle.waitFrames((fs) => fs.length >= 1, "idle barrier");
      assert.deepEqual(
        owner.frames.slice(mark).map((f) => f.message),
        ["barrier"],
        "the owner received only its own event",
      );
      assert.deepEqual(idle.frames, [NOT_ATTACHED], "the idle client received nothing else");
      assert.equal(sender.events().length, 0, "the sender got no event of the session");
      const fresh = await sender.init(); // the connection stays usable
      assert.equal(fresh.status, "ok");
      assert.notEqual(fresh.session_id, ok.session_id);
      return { answers, idle: idle.frames };
    } finally {
      owner.close();
      idle.close();
      sender.close();
    }
  },

  /** Actions before INIT are refused; a malformed INIT is 400; then a valid INIT works. */
  async before_init(url) {
    const tab = await openTab(url, "tab");
    try {
      tab.send(msg("too early"));
      tab.send({ action: "run", args: { command: "ls" } });
      await tab.waitFrames((fs) => fs.length >= 2, "two refusals");
      assert.deepEqual(tab.frames, [NOT_ATTACHED, NOT_ATTACHED]);
      const bad = await tab.init({ latest_event_id: -2 });
      assert.equal(bad.error_code, 400);
      const ok = await tab.init();
      assert.equal(ok.status, "ok");
      tab.send(msg("now"));
      await tab.waitEvents(1);
      assert.deepEqual(ids(tab.events()), [0]);
      const [, info] = await rest(url, `/api/sessions/${ok.session_id}`, ok.token);
      assert.equal(info.last_event_id, 0, "refused actions are not stored");
      return { frames: tab.frames.filter((f) => "error" in f) };
    } finally {
      tab.close();
    }
  },

  /** Polling only: a burst of actions reaches the server in few POSTs (many packets each). */
  async polling_burst(url) {
    const tab = await openTab(url, "poller", { transports: ["polling"] });
    const n = 60;
    try {
      const ok = await tab.init();
      assert.equal(ok.status, "ok");
      for (let i = 0; i < n; i += 1) tab.send(msg(`b${i}`));
      await tab.waitEvents(n).catch((err) => {
        throw new Error(`${err.message}; got ${tab.events().length}: ${ids(tab.events())}`);
      });
      assert.deepEqual(ids(tab.events()), [...Array(n).keys()]);
      assert.deepEqual(
        tab.events().map((e) => e.message),
        [...Array(n).keys()].map((i) => `b${i}`),
      );
      assert.equal(tab.transport(), "polling");
      return { count: tab.events().length };
    } finally {
      tab.close();
    }
  },
};

run(async (url, [name]) => {
  const scenario = scenarios[name];
  if (!scenario) throw new Error(`unknown scenario ${name}; known: ${Object.keys(scenarios)}`);
  return scenario(url);
});
