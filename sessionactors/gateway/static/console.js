/*
 * sessionactors web console (plain JS, no framework, nothing fetched from the internet).
 *
 * Transport: the bundled socket.io-client 4.8.4 (static/socket.io.min.js, copied from the
 * npm package socket.io-client@4.8.4, dist/socket.io.min.js), speaking PROTOCOL.md v1:
 * `oh_action` out, `oh_event` in.
 *
 * - Sessions this browser knows are kept in localStorage under STORE_KEY as a list of
 *   {session_id, token, last_event_id}; every tab of the origin shares it.
 * - On every (re)connect of the socket the open session is re-initialised with its token
 *   and latest_event_id = the highest event id this tab holds, so the server replays only
 *   what is missing; events are also de-duplicated here by id (an id is rendered once).
 * - Event data is only ever rendered with textContent (never as HTML).
 * - A session that ends on the server side (deleted, tokens revoked, failed, token refused)
 *   shows that state, says why and disables the inputs; a deletion is remembered in
 *   localStorage (`gone`), so that the 401 after a reload still says what happened.
 * - Commands: the oldest unfinished one is "running", later ones "queued" (the session runs
 *   them in order), finished ones show their exit; Interrupt (or Ctrl-C in an empty command
 *   box) sends change_agent_state "stopped", the session-layer Ctrl-C.
 */
(function () {
  "use strict";

  var STORE_KEY = "sessionactors.sessions";
  var HASH_PREFIX = "#session=";

  // ---------------------------------------------------------------- DOM helpers
  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        if (key === "className") node.className = attrs[key];
        else node.setAttribute(key, attrs[key]);
      });
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function nearBottom(node) {
    return node.scrollHeight - node.scrollTop - node.clientHeight < 40;
  }

  function keepAtBottom(node, wasNearBottom) {
    if (wasNearBottom) node.scrollTop = node.scrollHeight;
  }

  // Terminal escape sequences (colours, cursor moves) are not interpreted: drop them.
  var ANSI = /\u001b\[[0-9;?]*[ -/]*[@-~]|\u001b\][^\u0007\u001b]*(?:\u0007|\u001b\\)|\u001b[@-Z\\-_]/g;
  function plain(text) {
    return String(text === undefined || text === null ? "" : text).replace(ANSI, "").replace(/\r\n?/g, "\n");
  }

  function shorten(text, max) {
    text = plain(text).replace(/\s+/g, " ").trim();
    return text.length > max ? text.slice(0, max - 1) + "\u2026" : text;
  }

  // ---------------------------------------------------------------- stored sessions
  var storage = {
    load: function () {
      try {
        var list = JSON.parse(window.localStorage.getItem(STORE_KEY) || "[]");
        if (!Array.isArray(list)) return [];
        return list.filter(function (s) {
          return s && typeof s.session_id === "string" && typeof s.token === "string";
        });
      } catch (err) {
        return [];
      }
    },
    save: function (list) {
      try {
        window.localStorage.setItem(STORE_KEY, JSON.stringify(list));
      } catch (err) {
        showAlert("Could not save the session in this browser: " + err.message);
      }
    },
    find: function (sessionId) {
      return storage.load().filter(function (s) {
        return s.session_id === sessionId;
      })[0] || null;
    },
    // Merge: the newest token wins, last_event_id only grows (several tabs write here).
    upsert: function (sessionId, token, lastEventId) {
      var list = storage.load();
      var entry = null;
      list.forEach(function (s) {
        if (s.session_id === sessionId) entry = s;
      });
      if (!entry) {
        entry = { session_id: sessionId, token: token, last_event_id: -1 };
        list.unshift(entry);
      }
      if (token && token !== entry.token) delete entry.gone; // a new token: the session lives
      if (token) entry.token = token;
      var previous = typeof entry.last_event_id === "number" ? entry.last_event_id : -1;
      entry.last_event_id = typeof lastEventId === "number" ? Math.max(previous, lastEventId) : previous;
      storage.save(list);
    },
    // What ended the session on the server side ("deleted"), shown after a reload.
    markGone: function (sessionId, why) {
      var list = storage.load();
      list.forEach(function (s) {
        if (s.session_id === sessionId) s.gone = why;
      });
      storage.save(list);
    },
    remove: function (sessionId) {
      storage.save(storage.load().filter(function (s) {
        return s.session_id !== sessionId;
      }));
    }
  };

  // ---------------------------------------------------------------- state
  var state = {
    socket: null,
    connected: false,
    everConnected: false,
    session: null, // {session_id (null for a new one), token}
    attached: false, // this connection is attached to state.session (INIT answered ok)
    pendingInits: 0, // INITs sent and not answered yet
    initRetries: 0,
    runtimeFailed: false, // STATUS$ERROR_RUNTIME came while the INIT was unanswered
    retryTimer: null,
    seen: new Map(), // event id -> true (this tab, this session)
    maxId: -1,
    blocks: new Map(), // run action id -> terminal block
    queued: [], // actions typed while the session was not live
    history: [],
    historyPos: 0,
    saveTimer: null,
    statusLog: [] // session status names shown, oldest first (for tests and debugging)
  };

  // ---------------------------------------------------------------- status display
  var SESSION_LABELS = {
    none: "no session",
    connecting: "connecting",
    starting: "starting runtime",
    rehydrating: "passivated \u2192 rehydrating",
    live: "live",
    reconnecting: "reconnecting",
    error: "error",
    deleted: "deleted",
    revoked: "tokens revoked",
    failed: "failed",
    refused: "token refused"
  };

  // States in which nothing can be sent to the session: the inputs are disabled.
  var ENDED = { deleted: true, revoked: true, failed: true, refused: true };

  var CONN_LABELS = {
    connecting: "connecting",
    connected: "connected",
    disconnected: "disconnected",
    reconnecting: "reconnecting"
  };

  function setConnStatus(name, detail) {
    var node = $("conn-status");
    node.dataset.state = name;
    node.textContent = CONN_LABELS[name] + (detail ? " (" + detail + ")" : "");
  }

  function setSessionStatus(name, detail) {
    var node = $("session-status");
    node.dataset.state = name;
    node.textContent = SESSION_LABELS[name];
    var ended = ENDED[name] === true;
    ["command-input", "command-run", "message-input", "message-send"].forEach(function (id) {
      $(id).disabled = ended;
    });
    updateInterrupt();
    if (state.statusLog[state.statusLog.length - 1] !== name) state.statusLog.push(name);
    if (state.statusLog.length > 100) state.statusLog.shift();
    if (detail !== undefined) $("session-detail").textContent = detail;
  }

  function showAlert(message, code) {
    var box = $("alerts");
    var item = el("div", { className: "alert", "data-testid": "alert" });
    var text = el("span", { className: "alert-text" }, (code ? "Error " + code + ": " : "") + message);
    var close = el("button", { type: "button", className: "alert-close", "aria-label": "Dismiss" }, "\u00d7");
    close.addEventListener("click", function () {
      item.remove();
    });
    item.appendChild(text);
    item.appendChild(close);
    box.appendChild(item);
    while (box.children.length > 4) box.removeChild(box.firstChild);
  }

  function clearAlerts() {
    $("alerts").textContent = "";
  }

  // ---------------------------------------------------------------- session list
  var listRenderPending = false;

  function renderSessionList() {
    listRenderPending = false;
    var list = storage.load();
    var ul = $("session-list");
    ul.textContent = "";
    $("session-list-empty").hidden = list.length > 0;
    list.forEach(function (s) {
      var current = state.session && state.session.session_id === s.session_id;
      var li = el("li", { className: "session-entry" + (current ? " current" : "") });
      var open = el("button", {
        type: "button",
        className: "session-open",
        "data-testid": "session-open",
        "data-session-id": s.session_id
      });
      if (current) open.setAttribute("aria-current", "true");
      open.appendChild(el("code", null, s.session_id.slice(0, 12)));
      var last = current ? Math.max(s.last_event_id, state.maxId) : s.last_event_id;
      var count = last >= 0 ? last + 1 + (last === 0 ? " event" : " events") : "no events";
      open.appendChild(el("span", { className: "muted small" }, count));
      open.setAttribute("aria-label", "Open session " + s.session_id + ", " + count);
      open.addEventListener("click", function () {
        openSession(s.session_id);
      });
      var forget = el("button", {
        type: "button",
        className: "session-forget",
        "data-testid": "session-forget",
        "aria-label": "Forget session " + s.session_id + " in this browser"
      }, "\u00d7");
      forget.addEventListener("click", function () {
        if (state.session && state.session.session_id === s.session_id) closeSession();
        storage.remove(s.session_id);
        renderSessionList();
      });
      li.appendChild(open);
      li.appendChild(forget);
      ul.appendChild(li);
    });
  }

  function scheduleListRender() {
    if (listRenderPending) return;
    listRenderPending = true;
    window.setTimeout(renderSessionList, 100);
  }

  function scheduleProgressSave() {
    if (state.saveTimer !== null) return;
    state.saveTimer = window.setTimeout(saveProgress, 200);
  }

  function saveProgress() {
    if (state.saveTimer !== null) window.clearTimeout(state.saveTimer);
    state.saveTimer = null;
    if (state.session && state.session.session_id) {
      storage.upsert(state.session.session_id, state.session.token, state.maxId);
      scheduleListRender();
    }
  }

  // ---------------------------------------------------------------- session lifecycle
  function resetView() {
    state.seen = new Map();
    state.maxId = -1;
    state.blocks = new Map();
    state.queued = [];
    $("terminal").textContent = "";
    $("messages").textContent = "";
    $("events").textContent = "";
    updateEventCount();
  }

  function closeSession() {
    saveProgress();
    state.session = null;
    state.attached = false;
    resetView();
    $("terminal").appendChild(el("p", { id: "terminal-empty", className: "terminal-hint" },
      "Start a new session or open one of yours."));
    $("session-id").textContent = "\u2014";
    setSessionStatus("none", "");
    if (window.location.hash) history.replaceState(null, "", window.location.pathname);
  }

  function openSession(sessionId) {
    var stored = storage.find(sessionId);
    if (!stored) {
      showAlert("This browser holds no token for session " + sessionId + ".");
      return;
    }
    if (state.session && state.session.session_id === sessionId) {
      if (!state.attached) {
        state.session.rejected = false; // the user asks again: retry its INIT
        sendInit();
      }
      $("command-input").focus();
      return;
    }
    saveProgress();
    clearAlerts();
    state.session = { session_id: sessionId, token: stored.token };
    state.initRetries = 0;
    resetView();
    $("session-id").textContent = sessionId;
    setHash(sessionId);
    renderSessionList();
    sendInit();
    $("command-input").focus();
  }

  function newSession() {
    saveProgress();
    clearAlerts();
    state.session = { session_id: null, token: null };
    state.initRetries = 0;
    resetView();
    $("session-id").textContent = "(new)";
    renderSessionList();
    sendInit();
    $("command-input").focus();
  }

  function setHash(sessionId) {
    var want = HASH_PREFIX + sessionId;
    if (window.location.hash !== want) history.replaceState(null, "", want);
  }

  function sendInit() {
    if (!state.session) return;
    if (state.retryTimer !== null) {
      window.clearTimeout(state.retryTimer);
      state.retryTimer = null;
    }
    state.attached = false;
    if (!state.connected) {
      setSessionStatus(state.everConnected ? "reconnecting" : "connecting", "waiting for the connection");
      return;
    }
    var init = { action: "initialize", args: {} };
    if (state.session.token) {
      init.token = state.session.token;
      init.latest_event_id = state.maxId; // the highest id held here: replay only the rest
    }
    state.pendingInits += 1;
    state.runtimeFailed = false;
    setSessionStatus("connecting", state.session.token ? "resuming after event " + state.maxId : "creating a session");
    state.socket.emit("oh_action", init);
  }

  // ---------------------------------------------------------------- incoming frames
  function onFrame(frame) {
    if (!frame || typeof frame !== "object") return;
    if (frame.status_update === true) {
      onStatusUpdate(frame);
    } else if (frame.status === "ok" && typeof frame.session_id === "string") {
      onInitOk(frame);
    } else if (typeof frame.error === "string" || typeof frame.error_code === "number") {
      onError(frame);
    } else if (typeof frame.id === "number") {
      onEvent(frame);
    }
  }

  function onStatusUpdate(frame) {
    var id = String(frame.id || "");
    var message = frame.message ? String(frame.message) : id;
    if (id === "STATUS$SESSION_DELETED") {
      endSession("deleted", message);
      if (state.session && state.session.session_id) storage.markGone(state.session.session_id, "deleted");
      return;
    }
    if (frame.type === "error") {
      // Before the INIT is answered this is fatal for it (an error frame follows); once
      // attached, the session lives on (the runtime failed one action and restarts) unless
      // a 503 follows (it failed too often: see onError).
      if (state.attached) {
        state.runtimeFailed = true;
        $("session-detail").textContent = message;
      } else {
        state.runtimeFailed = true; // the INIT's error answer follows: do not retry it
        setSessionStatus("error", message);
      }
      showAlert(message);
      return;
    }
    if (id === "STATUS$REHYDRATING") setSessionStatus("rehydrating", message);
    else if (id === "STATUS$STARTING_RUNTIME") {
      if (!state.attached && $("session-status").dataset.state !== "rehydrating") setSessionStatus("starting", message);
      else $("session-detail").textContent = message;
    } else {
      $("session-detail").textContent = message;
    }
  }

  function onInitOk(frame) {
    state.pendingInits = Math.max(0, state.pendingInits - 1);
    if (state.pendingInits > 0 || !state.session) return; // a later INIT supersedes this one
    if (state.session.session_id && state.session.session_id !== frame.session_id) return;
    state.session.session_id = frame.session_id;
    state.session.token = frame.token || state.session.token;
    state.initRetries = 0;
    $("session-id").textContent = frame.session_id;
    storage.upsert(frame.session_id, state.session.token, state.maxId);
    setHash(frame.session_id);
    renderSessionList();
    state.attached = true;
    state.runtimeFailed = false;
    setSessionStatus("live", "attached");
    flushQueue();
  }

  // The server ended this connection's session: show it, stop sending, keep the events.
  function endSession(name, message, code) {
    state.attached = false;
    state.queued = [];
    if (state.session) state.session.rejected = true; // not re-sent on reconnect
    setSessionStatus(name, message);
    showAlert(message, code);
  }

  function onError(frame) {
    var message = typeof frame.error === "string" ? frame.error : "error";
    var code = typeof frame.error_code === "number" ? frame.error_code : null;
    if (state.attached && state.pendingInits === 0) {
      if (code === 401) {
        endSession("revoked", "This session's tokens were revoked: this tab was detached from it", code);
        return;
      }
      if (code === 503 && state.runtimeFailed) {
        endSession("failed", message, code);
        return;
      }
    }
    // While an INIT is unanswered no action is sent from here, so an error is its answer.
    if (state.pendingInits > 0) {
      state.pendingInits -= 1;
      if (state.pendingInits === 0) {
        var transient = (code === 503 || code === 429) && !state.runtimeFailed;
        if (transient && state.session && state.initRetries < 5) {
          state.initRetries += 1;
          setSessionStatus("error", message + " \u2014 retrying");
          state.retryTimer = window.setTimeout(sendInit, 500 * state.initRetries);
        } else if (code === 401 && state.session && state.session.token) {
          var stored = storage.find(state.session.session_id);
          endSession("refused", stored && stored.gone === "deleted"
            ? "This session was deleted (" + message + ")"
            : "The server refused this browser's token (" + message + "): the session was deleted or its tokens were revoked",
            code);
          return;
        } else {
          if (state.session) state.session.rejected = true; // do not re-send it on reconnect
          setSessionStatus(state.runtimeFailed ? "failed" : "error", message);
        }
      }
    }
    showAlert(message, code);
  }

  function onEvent(ev) {
    if (!state.session || state.pendingInits > 0) return; // frames of a session being left
    if (state.seen.has(ev.id)) return; // never render an id twice
    state.seen.set(ev.id, true);
    if (ev.id > state.maxId) state.maxId = ev.id;
    renderEvent(ev);
    renderTerminal(ev);
    if (ev.action === "message") renderMessage(ev);
    updateEventCount();
    scheduleProgressSave();
  }

  function updateEventCount() {
    var n = state.seen.size;
    $("event-count").textContent = n + (n === 1 ? " event" : " events");
    $("events").dataset.maxId = String(state.maxId);
  }

  // ---------------------------------------------------------------- rendering
  function summary(ev) {
    var args = ev.args || {};
    var extras = ev.extras || {};
    if (ev.action === "run") return "run: " + shorten(args.command, 80);
    if (ev.action === "message") return "message: " + shorten(args.content, 80);
    if (ev.action === "read") return "read: " + shorten(args.path, 80);
    if (ev.action === "write") return "write: " + shorten(args.path, 80);
    if (ev.action) return String(ev.action);
    if (ev.observation === "run") {
      if (extras.partial) return "output (partial): " + shorten(ev.content, 60);
      return "output, exit " + extras.exit_code + (extras.timed_out ? ", timed out" : "");
    }
    if (ev.observation === "error") return "error: " + shorten(ev.content, 80);
    if (ev.observation) return String(ev.observation) + ": " + shorten(ev.content, 60);
    return shorten(ev.message, 80);
  }

  function renderEvent(ev) {
    var list = $("events");
    var bottom = nearBottom(list);
    var li = el("li", {
      className: "event source-" + String(ev.source || "unknown").replace(/[^a-z]/gi, ""),
      "data-testid": "event",
      "data-event-id": String(ev.id)
    });
    li.appendChild(el("span", { className: "event-id" }, "#" + ev.id));
    li.appendChild(el("span", { className: "event-source" }, ev.source || "?"));
    li.appendChild(el("span", { className: "event-summary" }, summary(ev)));
    if (typeof ev.cause === "number") {
      var cause = ev.cause;
      li.title = "caused by #" + cause;
      var link = el("button", { type: "button", className: "event-cause", "data-testid": "event-cause",
        "data-cause": String(cause), "aria-label": "Show action #" + cause }, "\u21b3 #" + cause);
      link.addEventListener("click", function () {
        showEvent(cause);
      });
      li.appendChild(link);
    }
    list.appendChild(li);
    keepAtBottom(list, bottom);
  }

  // Scroll to an event and highlight it (an observation's link to its action).
  function showEvent(id) {
    var target = $("events").querySelector('[data-event-id="' + id + '"]');
    if (!target) return;
    var old = $("events").querySelector(".event.highlight");
    if (old) old.classList.remove("highlight");
    target.classList.add("highlight");
    target.scrollIntoView({ block: "nearest" });
    target.setAttribute("tabindex", "-1");
    target.focus();
  }

  // The session runs commands one at a time, in order: the oldest unfinished is running.
  function updateCommandStates() {
    var running = false;
    Array.from(state.blocks.keys()).sort(function (a, b) { return a - b; }).forEach(function (id) {
      var block = state.blocks.get(id);
      if (block.node.dataset.done === "true") {
        block.node.dataset.state = "done";
        return;
      }
      block.node.dataset.state = running ? "queued" : "running";
      block.exit.textContent = running ? "queued" : "running\u2026";
      running = true;
    });
    updateInterrupt();
  }

  function updateInterrupt() {
    var button = $("command-interrupt");
    if (!button) return;
    var running = $("terminal").querySelector('.cmd[data-state="running"]') !== null;
    button.disabled = !(running && state.attached && state.connected);
  }

  function interrupt() {
    send({ action: "change_agent_state", args: { agent_state: "stopped" } });
  }

  function terminalBlock(actionId, command) {
    var block = state.blocks.get(actionId);
    if (block) return block;
    var term = $("terminal");
    var hint = $("terminal-empty");
    if (hint) hint.remove();
    var node = el("div", { className: "cmd", "data-testid": "cmd-block", "data-action-id": String(actionId) });
    node.dataset.partials = "0";
    node.dataset.done = "false";
    var prompt = el("div", { className: "cmd-prompt" });
    prompt.appendChild(el("span", { className: "prompt-sign", "aria-hidden": "true" }, "$ "));
    prompt.appendChild(el("span", { className: "cmd-text", "data-testid": "cmd-text" },
      command === undefined ? "(command #" + actionId + ")" : command));
    var out = el("pre", { className: "cmd-output", "data-testid": "cmd-output" });
    var exit = el("div", { className: "cmd-exit", "data-testid": "cmd-exit" }, "running\u2026");
    node.appendChild(prompt);
    node.appendChild(out);
    node.appendChild(exit);
    term.appendChild(node);
    block = { node: node, out: out, exit: exit };
    state.blocks.set(actionId, block);
    return block;
  }

  function renderTerminal(ev) {
    var term = $("terminal");
    var bottom = nearBottom(term);
    if (ev.action === "run") {
      terminalBlock(ev.id, plain((ev.args || {}).command));
    } else if (typeof ev.cause === "number" && (ev.observation === "run" || ev.observation === "error") &&
               (state.blocks.has(ev.cause) || ev.observation === "run")) {
      var block = terminalBlock(ev.cause);
      var extras = ev.extras || {};
      if (ev.content) block.out.appendChild(document.createTextNode(plain(ev.content)));
      if (ev.observation === "error") {
        block.node.dataset.done = "true";
        block.node.classList.add("failed");
        block.exit.textContent = "error";
      } else if (extras.partial) {
        block.node.dataset.partials = String(Number(block.node.dataset.partials) + 1);
      } else {
        var code = extras.exit_code;
        block.node.dataset.done = "true";
        block.node.dataset.exitCode = String(code);
        block.node.classList.toggle("failed", code !== 0);
        block.exit.textContent = "exit " + code + (extras.timed_out ? " (timed out)" : "");
      }
    } else {
      return;
    }
    updateCommandStates();
    keepAtBottom(term, bottom);
  }

  function renderMessage(ev) {
    var list = $("messages");
    var bottom = nearBottom(list);
    var li = el("li", { className: "message source-" + String(ev.source || "").replace(/[^a-z]/gi, ""),
      "data-testid": "message", "data-event-id": String(ev.id) });
    li.appendChild(el("span", { className: "message-source" }, (ev.source || "?") + " #" + ev.id));
    li.appendChild(el("span", { className: "message-text" }, (ev.args || {}).content));
    list.appendChild(li);
    keepAtBottom(list, bottom);
  }

  // ---------------------------------------------------------------- outgoing actions
  function send(action) {
    if (!state.session) {
      showAlert("Start or open a session first.");
      return false;
    }
    if (state.attached && state.connected) {
      state.socket.emit("oh_action", action);
    } else {
      state.queued.push(action);
      $("session-detail").textContent = state.queued.length + " queued until the session is live";
    }
    return true;
  }

  function flushQueue() {
    if (!state.connected) return;
    var queued = state.queued;
    state.queued = [];
    queued.forEach(function (action) {
      state.socket.emit("oh_action", action);
    });
  }

  function onCommandSubmit(event) {
    event.preventDefault();
    var input = $("command-input");
    var command = input.value;
    if (!command.trim()) return;
    if (send({ action: "run", args: { command: command } })) {
      state.history.push(command);
      state.historyPos = state.history.length;
      input.value = "";
    }
  }

  function onCommandKey(event) {
    var input = $("command-input");
    var selected = input.selectionStart !== input.selectionEnd;
    if (event.key === "c" && event.ctrlKey && !selected && !$("command-interrupt").disabled) {
      event.preventDefault(); // Ctrl-C with nothing selected: interrupt, as in a terminal
      interrupt();
    } else if (event.key === "ArrowUp" && state.historyPos > 0) {
      state.historyPos -= 1;
      input.value = state.history[state.historyPos];
      event.preventDefault();
    } else if (event.key === "ArrowDown" && state.historyPos < state.history.length) {
      state.historyPos += 1;
      input.value = state.history[state.historyPos] || "";
      event.preventDefault();
    }
  }

  function onMessageSubmit(event) {
    event.preventDefault();
    var input = $("message-input");
    var content = input.value;
    if (!content.trim()) return;
    if (send({ action: "message", args: { content: content } })) input.value = "";
  }

  function onMessageKey(event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("message-form").requestSubmit();
    }
  }

  // ---------------------------------------------------------------- connection
  function connect() {
    if (typeof window.io !== "function") {
      setConnStatus("disconnected");
      showAlert("The Socket.IO client did not load.");
      return;
    }
    var socket = window.io({
      path: "/socket.io",
      reconnection: true,
      reconnectionDelay: 300,
      reconnectionDelayMax: 2000,
      randomizationFactor: 0.3,
      timeout: 10000
    });
    state.socket = socket;
    socket.on("connect", function () {
      state.connected = true;
      state.everConnected = true;
      state.pendingInits = 0;
      setConnStatus("connected");
      updateInterrupt();
      if (state.session && !state.session.rejected) sendInit(); // re-attach: token + highest id held
    });
    socket.on("disconnect", function (reason) {
      state.connected = false;
      state.attached = false;
      state.pendingInits = 0;
      setConnStatus("disconnected", reason);
      updateInterrupt();
      if (state.session && !state.session.rejected) setSessionStatus("reconnecting", "connection lost: " + reason);
      if (reason === "io server disconnect") {
        // The server dropped us on purpose (e.g. too slow); socket.io does not retry that.
        window.setTimeout(function () {
          socket.connect();
        }, 1000);
      }
    });
    socket.on("connect_error", function () {
      if (!socket.active) setConnStatus("disconnected", "connection refused");
    });
    socket.io.on("reconnect_attempt", function (attempt) {
      setConnStatus("reconnecting", "attempt " + attempt);
    });
    socket.io.on("reconnect_failed", function () {
      setConnStatus("disconnected", "gave up");
    });
    socket.on("oh_event", onFrame);
  }

  // ---------------------------------------------------------------- start
  function sessionFromHash() {
    var hash = window.location.hash;
    return hash.indexOf(HASH_PREFIX) === 0 ? decodeURIComponent(hash.slice(HASH_PREFIX.length)) : null;
  }

  function init() {
    $("new-session").addEventListener("click", newSession);
    $("command-form").addEventListener("submit", onCommandSubmit);
    $("command-input").addEventListener("keydown", onCommandKey);
    $("command-interrupt").addEventListener("click", interrupt);
    $("message-form").addEventListener("submit", onMessageSubmit);
    $("message-input").addEventListener("keydown", onMessageKey);
    window.addEventListener("storage", function (event) {
      if (event.key === STORE_KEY || event.key === null) scheduleListRender();
    });
    window.addEventListener("hashchange", function () {
      var wanted = sessionFromHash();
      if (wanted && (!state.session || state.session.session_id !== wanted)) openSession(wanted);
    });
    window.addEventListener("pagehide", saveProgress);
    renderSessionList();
    setSessionStatus("none", "");
    connect();
    var wanted = sessionFromHash();
    if (wanted) openSession(wanted);
  }

  // Expose a read-only view for tests and debugging.
  window.sessionConsole = {
    eventIds: function () {
      return Array.from(state.seen.keys());
    },
    maxId: function () {
      return state.maxId;
    },
    sessionId: function () {
      return state.session ? state.session.session_id : null;
    },
    statusLog: function () {
      return state.statusLog.slice();
    },
    initRetries: function () {
      return state.initRetries;
    },
    clearAlerts: clearAlerts
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
