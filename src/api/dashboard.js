// Junction ops dashboard. Plain JavaScript, no dependencies, served by the
// engine itself (src/api/dashboard.rs). It shows identifiers only (control
// id, type, sender, destination, route, ops-facing errors), never message
// content, and writes every value with textContent.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  // A pending row older than this marks its destination as stuck
  // (`/?stuck_after_secs=N` changes it).
  const STUCK_AFTER_SECS = (() => {
    const n = Number(new URLSearchParams(location.search).get("stuck_after_secs"));
    return Number.isFinite(n) && n > 0 ? n : 60;
  })();
  const MAX_EVENTS = 200;
  const TOKEN_KEY = "junction.ops_token";

  // ---- the ops token (sessionStorage only) ----

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (_) {
      return "";
    }
  }

  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      // Storage disabled: the token lives until the next reload only.
    }
    memoryToken = value;
  }

  let memoryToken = token();

  function authHeaders() {
    const t = memoryToken;
    return t ? { Authorization: "Bearer " + t } : {};
  }

  class Unauthorized extends Error {}

  // Fetches JSON from the API; a 401/403 asks for a token.
  async function getJson(path) {
    const res = await fetch(path, { headers: authHeaders(), cache: "no-store" });
    if (res.status === 401 || res.status === 403) {
      let why = "";
      try {
        why = (await res.json()).error || "";
      } catch (_) {}
      throw new Unauthorized(why || "HTTP " + res.status);
    }
    if (!res.ok) {
      let why = "";
      try {
        why = (await res.json()).error || "";
      } catch (_) {}
      throw new Error(path + ": HTTP " + res.status + (why ? " (" + why + ")" : ""));
    }
    return res.json();
  }

  function askForToken(reason) {
    const form = byId("token-form");
    byId("token-reason").textContent =
      "The operations API needs an ops token" + (reason ? ": " + reason : ".");
    form.hidden = false;
    byId("token-input").focus();
  }

  // ---- DOM helpers ----

  function byId(id) {
    return document.getElementById(id);
  }

  function cell(tr, text, field, cls) {
    const td = document.createElement("td");
    td.textContent = text === undefined || text === null ? "" : String(text);
    if (field) td.dataset.field = field;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function fillTable(id, rows, render) {
    const body = byId(id).querySelector("tbody");
    body.replaceChildren();
    for (const row of rows) {
      const tr = document.createElement("tr");
      render(tr, row);
      body.appendChild(tr);
    }
    const empty = byId(id + "-empty");
    if (empty) empty.hidden = rows.length > 0;
  }

  function age(secs) {
    if (secs === null || secs === undefined) return "";
    if (secs < 60) return secs + " s";
    if (secs < 3600) return Math.floor(secs / 60) + " min";
    if (secs < 86400) return (secs / 3600).toFixed(1) + " h";
    return (secs / 86400).toFixed(1) + " d";
  }

  function shortTime(rfc3339) {
    if (!rfc3339) return "";
    const d = new Date(rfc3339);
    if (isNaN(d)) return String(rfc3339);
    // Today: the time only; earlier: the date too.
    return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }

  // Ops-facing error texts can be long; the full text is in the API.
  function clip(text, n) {
    text = text || "";
    return text.length > n ? text.slice(0, n - 1) + "…" : text;
  }

  // ---- renderers ----

  function renderReady(ok, body) {
    const el = byId("ready");
    el.textContent = ok ? "ready" : body && body.status ? body.status : "unreachable";
    el.className = "badge " + (ok ? "good" : "bad");
    byId("ready-reasons").textContent = body && body.reasons ? body.reasons.join("; ") : "";
  }

  function renderQueues(queues) {
    fillTable("queues", queues, (tr, q) => {
      const stuck = q.pending > 0 && (q.oldest_pending_age_secs || 0) >= STUCK_AFTER_SECS;
      const classes = [];
      if (!q.available) classes.push("unavailable");
      if (stuck) classes.push("stuck");
      if (q.dead > 0) classes.push("has-dead");
      tr.className = classes.join(" ");
      tr.dataset.destination = q.destination;
      cell(tr, q.destination, "destination");
      cell(tr, q.kind + (q.external ? " (external)" : ""), "kind");
      const state = cell(tr, q.available ? (stuck ? "stuck" : "running") : "not available", "state");
      if (q.error) state.title = q.error;
      cell(tr, q.pending, "pending", "num");
      cell(tr, age(q.oldest_pending_age_secs), "oldest", "num");
      cell(tr, q.delivered, "delivered", "num");
      cell(tr, q.dead, "dead", "num");
      cell(tr, q.withheld, "withheld", "num");
    });
  }

  function renderDeadLetters(rows) {
    fillTable("dead-letters", rows, (tr, d) => {
      tr.dataset.delivery = d.id;
      cell(tr, d.id, "id");
      cell(tr, d.control_id, "control_id");
      cell(tr, d.type, "type");
      cell(tr, d.destination, "destination");
      cell(tr, d.attempts, "attempts", "num");
      cell(tr, shortTime(d.created_at), "created_at");
      const err = cell(tr, clip(d.last_error, 160), "last_error", "error-text");
      if (d.last_error) err.title = d.last_error;
    });
  }

  function renderProblems(rows) {
    fillTable("problems", rows, (tr, m) => {
      tr.dataset.message = m.id;
      tr.className = m.status === "accepted" ? (m.routing || "") : m.status;
      cell(tr, m.id, "id");
      cell(tr, shortTime(m.received_at), "received_at");
      cell(tr, m.control_id, "control_id");
      cell(tr, m.type, "type");
      cell(tr, m.sender, "sender");
      cell(tr, m.listener, "listener");
      cell(tr, m.ack_code, "ack_code");
      cell(tr, m.status === "accepted" ? m.routing || "routing" : m.status, "outcome");
    });
  }

  function renderRoutes(routes) {
    fillTable("routes", routes, (tr, r) => {
      tr.dataset.route = r.id;
      cell(tr, r.id, "id");
      cell(tr, (r.messages || []).join(", ") || (r.sources || []).map((s) => "source " + s).join(", "), "messages");
      cell(tr, r.when || "", "when");
      cell(tr, r.mapping || "(passthrough)", "mapping");
      cell(tr, (r.destinations || []).join(", "), "destinations");
      cell(tr, r.description || "", "description");
    });
  }

  // Parses the OpenMetrics text of /metrics into [{name, labels, value}].
  function parseMetrics(text) {
    const out = [];
    const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+([0-9.eE+-]+|NaN)/;
    const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split("\n")) {
      if (!raw || raw[0] === "#") continue;
      const m = line.exec(raw);
      if (!m) continue;
      const labels = {};
      if (m[2]) {
        let l;
        label.lastIndex = 0;
        while ((l = label.exec(m[2])) !== null) labels[l[1]] = l[2];
      }
      out.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return out;
  }

  function renderIntake(samples) {
    const listeners = new Map();
    const entry = (id) => {
      if (!listeners.has(id))
        listeners.set(id, { received: 0, accepted: 0, rejected: 0, duplicates: 0, open: 0 });
      return listeners.get(id);
    };
    const routed = {};
    for (const s of samples) {
      const id = s.labels.listener;
      switch (s.name) {
        case "junction_messages_received_total":
          entry(id).received += s.value;
          break;
        case "junction_messages_acked_total":
          if (s.labels.code === "AA" || s.labels.code === "CA") entry(id).accepted += s.value;
          break;
        case "junction_messages_rejected_total":
          entry(id).rejected += s.value;
          break;
        case "junction_messages_duplicate_total":
          entry(id).duplicates += s.value;
          break;
        case "junction_open_connections":
          entry(id).open += s.value;
          break;
        case "junction_messages_routed_total":
          routed[s.labels.outcome] = (routed[s.labels.outcome] || 0) + s.value;
          break;
      }
    }
    const rows = [...listeners.entries()].sort((a, b) => a[0].localeCompare(b[0]));
    fillTable("intake", rows, (tr, [id, c]) => {
      tr.dataset.listener = id;
      if (c.rejected > 0) tr.className = "has-rejected";
      cell(tr, id, "listener");
      cell(tr, c.received, "received", "num");
      cell(tr, c.accepted, "accepted", "num");
      cell(tr, c.rejected, "rejected", "num");
      cell(tr, c.duplicates, "duplicates", "num");
      cell(tr, c.open, "open", "num");
    });
    const parts = Object.keys(routed)
      .sort()
      .map((k) => k + " " + routed[k]);
    byId("routing-counts").textContent = parts.length ? "Routing: " + parts.join(", ") : "";
  }

  // ---- refresh loop ----

  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    const errors = [];
    try {
      const res = await fetch("/ready", { cache: "no-store" });
      let body = null;
      try {
        body = await res.json();
      } catch (_) {}
      renderReady(res.ok, body);
    } catch (e) {
      renderReady(false, null);
      errors.push("the engine does not answer (" + e.message + ")");
    }
    try {
      const res = await fetch("/metrics", { cache: "no-store" });
      if (res.ok) renderIntake(parseMetrics(await res.text()));
    } catch (_) {}

    const jobs = [
      ["/api/queues", (b) => renderQueues(b.queues || [])],
      ["/api/dead-letters?limit=20", (b) => renderDeadLetters(b.deliveries || [])],
      ["/api/routes", (b) => renderRoutes(b.routes || [])],
      [
        "problems",
        async () => {
          // (garbage: bytes that were not HL7 at all, counted as rejected too)
          const [failed, unrouted, rejected, garbage] = await Promise.all([
            getJson("/api/messages?routing=failed&limit=20"),
            getJson("/api/messages?routing=unrouted&limit=20"),
            getJson("/api/messages?status=rejected&limit=20"),
            getJson("/api/messages?status=garbage&limit=20"),
          ]);
          const all = [
            ...failed.messages,
            ...unrouted.messages,
            ...rejected.messages,
            ...garbage.messages,
          ];
          all.sort((a, b) => b.id - a.id);
          renderProblems(all.slice(0, 30));
        },
      ],
    ];
    let unauthorized = null;
    await Promise.all(
      jobs.map(async ([path, render]) => {
        try {
          if (path === "problems") await render();
          else render(await getJson(path));
        } catch (e) {
          if (e instanceof Unauthorized) unauthorized = e;
          else errors.push(e.message);
        }
      })
    );
    const errorEl = byId("error");
    errorEl.textContent = errors.join("; ");
    errorEl.hidden = errors.length === 0;
    if (unauthorized) {
      askForToken(memoryToken ? "the token was refused (" + unauthorized.message + ")" : "");
    } else {
      byId("token-form").hidden = true;
      byId("updated").textContent = "updated " + new Date().toLocaleTimeString();
      startEvents();
    }
    byId("forget-token").hidden = !memoryToken;
    timer = setTimeout(refresh, REFRESH_MS);
  }

  // ---- live events ----

  // Which fields of an event are shown (all are identifiers, no content).
  const EVENT_FIELDS = [
    "listener", "source", "peer", "sender", "control_id", "message_type", "ack_code",
    "duplicate", "routes", "destinations", "stage", "destination", "delivery_id", "attempt",
    "outcome", "error", "retry_at", "remote_ref", "message_id", "from", "workflow_id",
    "reason", "bytes", "missed",
  ];

  function addEvent(name, data) {
    const list = byId("events");
    const li = document.createElement("li");
    li.dataset.event = name;
    if (data.control_id) li.dataset.controlId = data.control_id;
    if (/Failed|Rejected|Refused|DeadLettered|FramingError|Unrouted|Lagged/.test(name)) li.className = "bad";
    else if (/Delivered|Acked|Routed/.test(name)) li.className = "good";
    const time = document.createElement("time");
    time.textContent = data.at ? new Date(data.at).toLocaleTimeString() : new Date().toLocaleTimeString();
    const kind = document.createElement("strong");
    kind.textContent = name;
    const rest = document.createElement("span");
    const parts = [];
    for (const f of EVENT_FIELDS) {
      const v = data[f];
      if (v === undefined || v === null || v === "" || v === false) continue;
      if (Array.isArray(v) && v.length === 0) continue;
      parts.push(f + "=" + (Array.isArray(v) ? v.join(",") : String(v)));
    }
    rest.textContent = parts.join("  ");
    li.append(time, " ", kind, " ", rest);
    list.prepend(li);
    while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  }

  function liveState(text, ok) {
    const el = byId("live-state");
    el.textContent = "live: " + text;
    el.className = "badge " + (ok ? "good" : "bad");
    el.dataset.state = text;
  }

  let streaming = false;

  function startEvents() {
    if (streaming) return;
    streaming = true;
    streamWithFetch().catch((e) => {
      // No streaming fetch (old browser): EventSource sends no token, so it
      // only works where /api is open (loopback).
      if (e instanceof TypeError && !memoryToken && typeof EventSource === "function") {
        streamWithEventSource();
      } else {
        liveState("disconnected, retrying", false);
        setTimeout(() => {
          streaming = false;
          startEvents();
        }, REFRESH_MS);
      }
    });
  }

  // Reads /api/events as a stream so the bearer token can be sent.
  async function streamWithFetch() {
    const res = await fetch("/api/events", {
      headers: Object.assign({ Accept: "text/event-stream" }, authHeaders()),
      cache: "no-store",
    });
    if (res.status === 401 || res.status === 403) {
      streaming = false;
      liveState("needs a token", false);
      return;
    }
    if (!res.ok) throw new Error("HTTP " + res.status);
    if (!res.body || !res.body.getReader) throw new TypeError("no streaming fetch");
    liveState("connected", true);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
    throw new Error("the event stream ended");
  }

  // One SSE block: `event:` and `data:` lines; comments (keep-alives) ignored.
  function dispatch(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
    }
    if (data.length === 0) return;
    try {
      addEvent(name, JSON.parse(data.join("\n")));
    } catch (_) {}
  }

  function streamWithEventSource() {
    const source = new EventSource("/api/events");
    source.onopen = () => liveState("connected", true);
    source.onerror = () => liveState("reconnecting", false);
    const names = [
      "MessageAcked", "MessageRejected", "FramingError", "ConnectionOpened", "ConnectionClosed",
      "ConnectionRefused",
      "MessageRouted", "MessageUnrouted", "RoutingFailed", "Delivered", "DeliveryFailed",
      "DeadLettered", "Withheld", "MeshReceived", "MeshAcknowledged", "Lagged",
    ];
    for (const n of names) {
      source.addEventListener(n, (ev) => {
        try {
          addEvent(n, JSON.parse(ev.data));
        } catch (_) {}
      });
    }
  }

  // ---- wiring ----

  document.addEventListener("DOMContentLoaded", () => {
    byId("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = byId("token-input");
      setToken(input.value.trim());
      input.value = "";
      refresh();
    });
    byId("forget-token").addEventListener("click", () => {
      setToken("");
      location.reload();
    });
    refresh();
  });
})();
