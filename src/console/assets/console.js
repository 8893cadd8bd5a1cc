// The console page's behaviour: loads the board from the JSON API (the same one scripts use),
// keeps it live from /api/stream (server-sent events), and sends operator commands, showing the
// gateway's answer or the reason it did not come. Every string from the API goes in through
// textContent, never as HTML: alarm keys and messages come from devices and brokers.
"use strict";

(function () {
  const LEVELS = ["normal", "warning", "critical", "emergency"];
  const LEVEL_TEXT = { normal: "✓ NORMAL", warning: "▲ WARNING", critical: "◆ CRITICAL", emergency: "✖ EMERGENCY" };
  // ISA-18.2 states in the order an operator must deal with them.
  const ISA_ORDER = ["active_unacknowledged", "active_acknowledged", "cleared_unacknowledged", "shelved", "out_of_service", "normal"];
  const ISA_TEXT = {
    active_unacknowledged: "ACTIVE, UNACKED",
    active_acknowledged: "active, acked",
    cleared_unacknowledged: "cleared, unacked",
    shelved: "shelved",
    out_of_service: "out of service",
    normal: "normal",
  };
  const SEV_RANK = { emergency: 3, critical: 2, warning: 1 };
  // Alarm rows drawn until the operator asks for all: the most urgent first, more than a wall
  // screen holds; the rest are counted, by state, under the list with a button to show them.
  // Building and laying out a thousand rows was most of the page's first render.
  const ALARMS_SHOWN = 50;
  // Sorting 1,000 rows: one collator for names, and RFC 3339 times compared as strings.
  const byName = new Intl.Collator().compare;
  const byText = (x, y) => (x < y ? -1 : x > y ? 1 : 0);

  const state = {
    me: { user: null, can_read: true },
    zones: new Map(), // site|zone -> zone item
    alarms: new Map(), // site|alarm -> latest event
    gateways: new Map(), // site|gateway -> gateway item
    audit: [],
    showAll: false, // every alarm row, not only the first ALARMS_SHOWN
    // Until the full alarm list is in (the page's own first screen carries only the
    // ALARMS_SHOWN most urgent alarms): counts: ISA state -> alarms in it, all of them, kept
    // up to date by live updates; isa: site|alarm -> state counted, for the ones the page
    // has; live: the keys live updates changed meanwhile, newer than the list asked for.
    partial: null,
  };

  // ---- small DOM helper -------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const $ = (id) => document.getElementById(id);

  // How fast the page is, for whoever runs the wall screen and for benches/console_page.rs:
  // when the first full render was on screen (ms since navigation start; the body also gets
  // data-ready; dataMs: when the API's answers were in, builtMs: when the DOM was built) and
  // how long the last live updates took from arrival to the next frame; fullMs: when the full
  // alarm list, asked for after the first frame, was in and drawn).
  const perf = (window.emberwatchPerf = { dataMs: null, builtMs: null, readyMs: null, fullMs: null, applyMs: [] });
  function afterFrame(f) {
    requestAnimationFrame(() => setTimeout(f, 0));
  }
  function markReady() {
    if (perf.readyMs !== null) return;
    afterFrame(() => {
      perf.readyMs = performance.now();
      if (!state.partial) perf.fullMs = perf.readyMs; // the first screen had every alarm
      document.body.dataset.ready = "1";
      // The full alarm list after the first frame, when the page is idle.
      if (window.requestIdleCallback) requestIdleCallback(() => loadRest(), { timeout: 500 });
      else setTimeout(loadRest, 0);
    });
  }
  function applied(t0) {
    perf.applyMs.push(performance.now() - t0);
    if (perf.applyMs.length > 100) perf.applyMs.shift();
  }

  // ---- keyed lists: the alarm list and the zone board, updated in place -------------------
  // Each keeps one element per key (site|alarm, site|zone) and the item it shows. A render
  // rebuilds only the elements whose item changed (same element, new content), moves only
  // those out of place, and builds a list shown for the first time in one fragment; nothing
  // reads layout between writes. With 1,000 alarms a live update touches one row.
  function keyed(container) {
    return { container, shown: new Map() }; // key -> { el, item, json }
  }

  // Gives `el` the attributes and children of `fresh` (a new rendering of its item).
  function refill(el, fresh) {
    for (const name of el.getAttributeNames()) if (!fresh.hasAttribute(name)) el.removeAttribute(name);
    for (const name of fresh.getAttributeNames()) el.setAttribute(name, fresh.getAttribute(name));
    el.replaceChildren(...fresh.childNodes);
  }

  // Shows `items` (in order) in list `k`: `build(item)` renders one; `empty` shows when none.
  function sync(k, items, keyOf, build, empty) {
    if (!items.length) {
      k.shown.clear();
      k.container.replaceChildren(empty());
      return;
    }
    const els = [];
    const at = new Map(); // element -> its index
    for (const item of items) {
      const key = keyOf(item);
      let s = k.shown.get(key);
      if (!s) {
        s = { el: build(item), item, json: null };
        k.shown.set(key, s);
      } else if (s.item !== item) {
        // A reload brings equal items as new objects: rebuild only what differs.
        const json = JSON.stringify(item);
        if (s.json === null) s.json = JSON.stringify(s.item);
        if (json !== s.json) refill(s.el, build(item));
        s.item = item;
        s.json = json;
      }
      at.set(s.el, els.length);
      els.push(s.el);
    }
    for (const [key, s] of k.shown) {
      if (!at.has(s.el)) {
        s.el.remove();
        k.shown.delete(key);
      }
    }
    const c = k.container;
    for (const n of [...c.childNodes]) if (!at.has(n)) n.remove(); // "No alarm." and the like
    if (!c.firstChild) {
      const f = document.createDocumentFragment();
      f.append(...els);
      c.append(f);
      return;
    }
    // The elements already in the wanted order stay (the longest such run); every other one
    // is put before its successor, last to first: one move for a row that changed place.
    const stay = longestRun([...c.childNodes].map((n) => at.get(n)));
    for (let i = els.length - 1, next = null; i >= 0; i--) {
      if (!stay.has(i)) c.insertBefore(els[i], next);
      next = els[i];
    }
  }

  // The values of a longest increasing subsequence of `seq` (patience sorting, n log n).
  function longestRun(seq) {
    const tails = [], tailAt = [], prev = [];
    for (let j = 0; j < seq.length; j++) {
      let lo = 0, hi = tails.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (tails[mid] < seq[j]) lo = mid + 1;
        else hi = mid;
      }
      tails[lo] = seq[j];
      tailAt[lo] = j;
      prev[j] = lo > 0 ? tailAt[lo - 1] : -1;
    }
    const run = new Set();
    for (let j = tails.length ? tailAt[tails.length - 1] : -1; j >= 0; j = prev[j]) run.add(seq[j]);
    return run;
  }

  // Live updates are drawn once per frame, however many arrive (a replay brings a thousand).
  const dirty = { zones: false, alarms: false, since: [], frame: 0, timer: 0 };
  function redraw(what, t0) {
    dirty[what] = true;
    if (t0 !== undefined) dirty.since.push(t0);
    if (dirty.frame) return;
    dirty.frame = requestAnimationFrame(drawDirty);
    dirty.timer = setTimeout(drawDirty, 250); // a hidden tab has no frames
  }
  function drawDirty() {
    cancelAnimationFrame(dirty.frame);
    clearTimeout(dirty.timer);
    dirty.frame = 0;
    if (dirty.zones) renderZones();
    if (dirty.alarms) {
      renderAlarms();
      offerPointsLater();
    }
    dirty.zones = dirty.alarms = false;
    const since = dirty.since.splice(0);
    // After this frame's style, layout and paint.
    setTimeout(() => since.forEach(applied), 0);
  }

  // Made once: toLocaleTimeString with options builds a formatter on every call, which was
  // most of the time a 1,000-row list took to draw.
  const HMS = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  const DAY = new Intl.DateTimeFormat();
  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    const hms = HMS.format(d);
    return d.toDateString() === new Date().toDateString() ? hms : DAY.format(d) + " " + hms;
  }
  function fmtNum(v, unit) {
    if (v === null || v === undefined) return "—";
    const n = Number(v);
    const s = Number.isFinite(n) ? (Math.abs(n) >= 100 ? n.toFixed(0) : n.toFixed(1)) : String(v);
    return unit ? s + " " + unit : s;
  }

  // ---- notices: command results and errors ------------------------------------------------
  function notice(kind, text) {
    const el = h("p", { class: "notice " + kind, "data-kind": kind },
      h("span", {}, text),
      h("button", { type: "button", onclick: () => el.remove() }, "Dismiss"));
    $("notices").prepend(el);
    while ($("notices").children.length > 5) $("notices").lastChild.remove();
    if (kind === "ok") setTimeout(() => el.remove(), 10000);
  }

  // ---- fetching ---------------------------------------------------------------------------
  async function getJson(path) {
    const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json", "X-Requested-With": "emberwatch-page" } });
    if (r.status === 401) throw new Error("401");
    if (!r.ok) throw new Error(path + ": HTTP " + r.status + " " + (await r.text()).slice(0, 200));
    return r.json();
  }

  // The first screen's API answers, inline in the page when the console had them (whoever may
  // read): the first render waits for no request. Used once; a reload asks the API.
  function firstScreen() {
    const el = $("first-screen");
    if (!el) return null;
    el.remove();
    try {
      return JSON.parse(el.textContent);
    } catch (e) {
      return null;
    }
  }

  async function loadAll() {
    const first = firstScreen();
    // The board is asked for together with /api/me, not after it: one round trip, not two.
    const board = first
      ? Promise.resolve([first.zones, first.alarms, first.gateways, first.audit])
      : Promise.all([
        getJson("/api/zones"), getJson("/api/alarms?state=all"), getJson("/api/gateways"), getJson("/api/audit?limit=20"),
      ]);
    board.catch(() => {}); // without a login it is refused (401): the login form is the page
    try {
      state.me = first ? first.me : await getJson("/api/me");
    } catch (e) {
      state.me = { user: null, can_read: false };
    }
    renderWho();
    $("zones").classList.remove("loading");
    if (!state.me.can_read) {
      $("zones").replaceChildren(h("p", { class: "empty" }, "Log in to see the board."));
      return;
    }
    try {
      const [zones, alarms, gateways, audit] = await board;
      if (perf.dataMs === null) perf.dataMs = performance.now();
      state.zones = new Map(zones.map((z) => [z.site + "|" + z.zone, z]));
      state.alarms = new Map(alarms.map((a) => [a.site + "|" + a.alarm, a]));
      state.partial = first && first.alarm_counts ? {
        counts: new Map(Object.entries(first.alarm_counts)),
        isa: new Map(alarms.map((a) => [a.site + "|" + a.alarm, isaOf(a)])),
        live: new Set(),
      } : null;
      state.gateways = new Map(gateways.map((g) => [g.site + "|" + g.gateway, g]));
      state.audit = audit.slice(-20).reverse();
      renderAll();
      if (perf.builtMs === null) perf.builtMs = performance.now();
    } catch (e) {
      notice("error", "Could not load the board: " + e.message);
    }
  }

  // The full alarm list, when the first screen had only its most urgent part. Live updates that
  // came meanwhile are at least as new as what the list holds for their alarm (the list was
  // asked for after they were sent), so they stay; every other alarm is the list's.
  let restLoading = null;
  function loadRest() {
    const pending = state.partial;
    if (!pending || restLoading) return;
    restLoading = getJson("/api/alarms").then((alarms) => {
      if (state.partial !== pending) return; // a reload (loadAll) came first
      const full = new Map();
      for (const a of alarms) {
        // The same event as the first screen's keeps its object, so its row is left alone
        // (the two are serialised with their keys in different orders).
        const k = a.site + "|" + a.alarm;
        const had = state.alarms.get(k);
        const same = had && had.event_id !== undefined && had.event_id === a.event_id && had.seq === a.seq;
        full.set(k, same ? had : a);
      }
      for (const k of pending.live) full.set(k, state.alarms.get(k));
      state.alarms = full;
      state.partial = null;
      redraw("alarms");
      afterFrame(() => {
        if (perf.fullMs === null) perf.fullMs = performance.now();
      });
    }).catch((e) => {
      notice("error", "Could not load the full alarm list: " + e.message);
    }).finally(() => {
      restLoading = null;
    });
  }

  // ---- rendering --------------------------------------------------------------------------
  function renderWho() {
    const user = state.me.user;
    $("login").hidden = !!user;
    $("logout").hidden = !user;
    $("user").textContent = user || "";
  }

  function renderAll() {
    renderZones();
    renderAlarms();
    renderGateways();
    renderAudit();
    offerPointsLater();
  }

  // The trend's point chooser gets the points of the alarms when the page is idle: a thousand
  // options are nobody's first look.
  let offering = false;
  function offerPointsLater() {
    if (offering) return;
    offering = true;
    const offer = () => {
      offering = false;
      window.EmberTrend.offerPoints(pointsKnown());
    };
    if (window.requestIdleCallback) requestIdleCallback(offer, { timeout: 2000 });
    else setTimeout(offer, 200);
  }

  function renderZones() {
    const zones = [...state.zones.values()].sort((a, b) =>
      LEVELS.indexOf(b.level) - LEVELS.indexOf(a.level) || byName(a.site + a.zone, b.site + b.zone));
    sync(tiles, zones, (z) => z.site + "|" + z.zone, zoneTile,
      () => h("p", { class: "empty" }, "No zone reported yet."));
  }

  // A tile's fixed part, cloned for each zone: one deep copy in the browser is several times
  // cheaper than building the same elements one call at a time, and a big site's board has
  // 200 tiles to build before its first frame. Static markup only: every string from the API
  // goes in through textContent below.
  let tileSkeleton = null;
  function skeleton() {
    if (!tileSkeleton) {
      const t = document.createElement("template");
      t.innerHTML = "<article class=\"tile\"><h3></h3><div class=\"site\"></div><div class=\"level\"></div>" +
        "<dl class=\"facts\"><dt>Alarms</dt><dd></dd><dt>Drain</dt><dd></dd><dt>Power cut</dt><dd></dd></dl></article>";
      tileSkeleton = t.content.firstChild;
    }
    return tileSkeleton.cloneNode(true);
  }

  function zoneTile(z) {
    const level = LEVELS.includes(z.level) ? z.level : "normal";
    const active = z.active || [];
    const el = skeleton();
    el.className = "tile level-" + level;
    el.dataset.zone = z.zone;
    el.dataset.site = z.site;
    el.dataset.level = level;
    const [name, site, lvl, facts] = el.children;
    name.textContent = z.zone;
    site.textContent = z.site;
    lvl.textContent = LEVEL_TEXT[level];
    const f = facts.children; // Alarms, its value, Drain, its value, Power cut, its value
    f[1].textContent = active.length + " active, " + (z.unacknowledged || 0) + " unacked";
    f[3].textContent = drainText(z.drain);
    f[5].append(clearanceNode(z.clearance));
    if (z.faults) {
      facts.insertBefore(h("dt", {}, "Faults"), f[2]);
      facts.insertBefore(h("dd", { class: "clear-no" }, z.faults + " sensor or link fault" + (z.faults > 1 ? "s" : "")), f[3]);
    }
    if (active.length) {
      el.insertBefore(h("ul", {}, active.slice(0, 6).map((k) => h("li", { class: "key" }, k)),
        active.length > 6 ? h("li", {}, "… " + (active.length - 6) + " more") : null), facts);
    }
    const agents = z.drain && z.drain.agents ? Object.entries(z.drain.agents) : [];
    if (agents.length) {
      el.append(h("div", { class: "agents" }, agents.map(([name, p]) =>
        h("span", { class: "agent p-" + p, title: "agent " + name + ": " + p }, name + ": " + p))));
    }
    return el;
  }

  function drainText(d) {
    if (!d) return "none";
    const agents = d.agents ? Object.values(d.agents) : [];
    const done = agents.filter((p) => p === "done").length;
    let s = String(d.state || "?").replace("_", " ");
    if (agents.length) s += " (" + done + "/" + agents.length + " agents done)";
    if (d.drill) s += " — drill";
    return s;
  }

  function clearanceNode(c) {
    if (!c) return h("span", {}, "no clearance");
    return c.clear
      ? h("span", { class: "clear-yes" }, "✓ CLEAR to cut " + fmtTime(c.time))
      : h("span", { class: "clear-no" }, "✖ NOT clear" + (c.reason ? ": " + c.reason : ""));
  }

  function isaOf(a) {
    if (a.isa_state) return a.isa_state;
    if (a.state === "active") return a.acked ? "active_acknowledged" : "active_unacknowledged";
    return a.acked ? "normal" : "cleared_unacknowledged";
  }

  function renderAlarms() {
    const rows = [...state.alarms.values()].filter((a) => isaOf(a) !== "normal");
    rows.sort((a, b) => ISA_ORDER.indexOf(isaOf(a)) - ISA_ORDER.indexOf(isaOf(b))
      || (SEV_RANK[b.severity] || 0) - (SEV_RANK[a.severity] || 0)
      || byText(String(b.since || b.time), String(a.since || a.time)));
    const shown = state.showAll ? rows : rows.slice(0, ALARMS_SHOWN);
    // Not drawn, by state: counted here, or, until the full list is in, what the console
    // counted less what is drawn.
    const hidden = new Map();
    let total = rows.length;
    if (state.partial) {
      total = 0;
      for (const [s, n] of state.partial.counts) {
        hidden.set(s, n);
        total += n;
      }
      for (const a of shown) hidden.set(isaOf(a), (hidden.get(isaOf(a)) || 0) - 1);
    } else {
      for (const a of rows.slice(shown.length)) hidden.set(isaOf(a), (hidden.get(isaOf(a)) || 0) + 1);
    }
    $("alarm-count").textContent = total ? "(" + total + ")" : "";
    sync(alarmRows, shown, (a) => a.site + "|" + a.alarm, alarmRow,
      () => h("tr", { class: "empty" }, h("td", { colspan: 7 }, "No alarm.")));
    renderMore(total, hidden);
  }

  // Under the list: how many alarms are not drawn, by state, and the button that draws them
  // (or, once all are, the one that goes back to the first ALARMS_SHOWN).
  let moreKey = "";
  function renderMore(total, byState) {
    let count = 0;
    for (const [s, n] of byState) {
      if (n > 0) count += n;
      else byState.delete(s);
    }
    const parts = ISA_ORDER.filter((s) => byState.has(s)).map((s) => byState.get(s) + " " + (ISA_TEXT[s] || s).toLowerCase());
    // With the full list still on its way, "Show all" asks for it and draws it when it comes.
    const all = state.showAll && !state.partial && total > ALARMS_SHOWN;
    const key = count + "|" + parts.join(",") + "|" + all + "|" + total;
    if (key === moreKey) return;
    moreKey = key;
    const foot = $("alarm-more");
    if (!count && !all) {
      foot.replaceChildren();
      return;
    }
    const toggle = () => {
      state.showAll = state.partial ? true : !state.showAll;
      loadRest();
      renderAlarms();
    };
    foot.replaceChildren(h("tr", { class: "more" }, h("td", { colspan: 7 },
      all
        ? h("span", { id: "alarms-hidden", "data-hidden": 0 }, "All " + total + " alarms shown. ")
        : h("span", { id: "alarms-hidden", "data-hidden": count },
          count + " more alarm" + (count > 1 ? "s" : "") + " not shown (" + parts.join("; ") + "). "),
      h("button", { type: "button", id: "alarms-toggle", onclick: toggle },
        all ? "Show only the first " + ALARMS_SHOWN : "Show all " + total))));
  }

  function alarmRow(a) {
    const isa = isaOf(a);
    const by = [a.acked_by ? "acked by " + a.acked_by : null, a.shelved_by ? "shelved by " + a.shelved_by : null]
      .filter(Boolean).join(", ");
    const actions = h("td", { class: "actions" });
    if (isa === "active_unacknowledged" || isa === "cleared_unacknowledged") {
      actions.append(h("button", { type: "button", class: "ack", onclick: (e) => ack(a, e.target) }, "Acknowledge"));
    }
    if (isa !== "shelved" && isa !== "out_of_service") {
      actions.append(h("button", { type: "button", class: "shelve", onclick: () => shelve(a) }, "Shelve"));
    }
    if (a.device && a.point && !a.device.startsWith("_")) {
      actions.append(h("button", { type: "button", class: "trend-btn", onclick: () => window.EmberTrend.show(a.site, a.device, a.point) }, "Trend"));
    }
    return h("tr", { class: "isa-" + isa, "data-alarm": a.alarm, "data-site": a.site, "data-isa": isa },
      h("td", { class: "isa" }, ISA_TEXT[isa] || isa),
      h("td", { class: "sev sev-" + a.severity }, String(a.severity || "").toUpperCase()),
      h("td", {}, h("div", { class: "key" }, a.zone + " · " + a.alarm),
        h("div", { class: "msg" }, a.message || "", by ? " — " + by : "", a.chattering ? " — chattering" : "",
          a.shelved_until ? " — shelved until " + fmtTime(a.shelved_until) : "")),
      h("td", { class: "num value" }, fmtNum(a.value, a.unit)),
      h("td", { class: "num" }, fmtNum(a.threshold, a.unit)),
      h("td", { class: "num", title: "last event " + fmtTime(a.time) }, fmtTime(a.since || a.time)),
      actions);
  }

  function renderGateways() {
    const gws = [...state.gateways.values()].sort((a, b) => (a.site + a.gateway).localeCompare(b.site + b.gateway));
    if (!gws.length) {
      $("gateways").replaceChildren(h("p", { class: "empty" }, "No gateway seen yet."));
      return;
    }
    // The two gateways of a redundant pair side by side, under one heading saying which is
    // active, since when and why.
    const groups = new Map();
    for (const g of gws) {
      const k = g.site + "|" + (g.peer ? [g.gateway, g.peer].sort().join("|") : g.gateway);
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push(g);
    }
    $("gateways").replaceChildren(...[...groups.values()].map((members) => {
      const one = members[0];
      if (!one.peer) return gatewayCard(one);
      const names = [one.gateway, one.peer].sort();
      const active = members.find((g) => g.state === "online" && g.role === "active");
      const head = active
        ? "active: " + active.gateway + (active.role_since ? " since " + fmtTime(active.role_since) : "") +
          (active.role_reason ? " (" + active.role_reason + ")" : "")
        : "no active gateway";
      return h("div", { class: "pair" + (active ? "" : " pair-none"), "data-pair": names.join(" "), "data-active": active ? active.gateway : "" },
        h("div", { class: "pair-head" }, "Pair " + names.join(" ⇄ ") + " · " + head),
        h("div", { class: "pair-cards" }, ...members.map(gatewayCard)));
    }));
  }

  function gatewayCard(g) {
    let health = g.state || "unknown";
    if (health === "online" && g.role === "standby") health = "standby";
    const text = {
      // A gateway alone is active too (its status says so); only a pair's active one is marked.
      online: g.role === "active" && g.peer ? "★ ACTIVE" : "● ONLINE", standby: "◐ STANDBY", offline: "✖ OFFLINE (last will)", fault: "✖ FAULT",
    }[health] || "? " + health.toUpperCase();
    const missing = (g.missing || []).map(([a, b]) => (a === b ? String(a) : a + "–" + b));
    const outbox = g.outbox && g.outbox.undelivered !== undefined ? "outbox " + g.outbox.undelivered + " undelivered" : null;
    const role = g.role && g.peer && g.state === "online"
      ? g.role + (g.role_since ? " since " + fmtTime(g.role_since) : "") + (g.role_reason ? ": " + g.role_reason : "")
      : null;
    return h("article", { class: "gw gw-" + health + (g.role === "active" && g.peer && health === "online" ? " gw-active" : ""), "data-gateway": g.gateway, "data-state": health, "data-role": g.role || "" },
      h("h3", {}, g.gateway), h("div", { class: "detail" }, g.site + (g.peer ? " · pair with " + g.peer : "")),
      h("div", { class: "state" }, text),
      role ? h("div", { class: "detail role" }, role) : null,
      g.reason ? h("div", { class: "detail" }, g.reason) : null,
      h("div", {}, "seq " + (g.seq ?? "—") + " · received through " + (g.received_through ?? "—")),
      missing.length ? h("div", { class: "missing" }, "missing " + missing.join(", ")) : h("div", { class: "detail" }, "no gap"),
      outbox ? h("div", { class: "detail" }, outbox) : null);
  }

  function renderAudit() {
    $("audit").replaceChildren(...state.audit.map((a) =>
      h("li", { class: a.ok ? "" : "bad" }, fmtTime(a.time) + " " + (a.user || "?") + " " + a.command + " " +
        (a.alarm || a.zone || "") + " on " + a.gateway +
        (a.answered_by && a.answered_by !== a.gateway ? " (answered by " + a.answered_by + ", the active one)" : "") +
        ": " + (a.ok ? "ok" : "refused" + (a.reason ? " (" + a.reason + ")" : "")))));
  }

  function pointsKnown() {
    const pts = new Set();
    for (const a of state.alarms.values()) {
      if (a.device && a.point && !a.device.startsWith("_")) pts.add(a.site + "|" + a.device + "|" + a.point);
    }
    return pts;
  }

  // ---- commands ---------------------------------------------------------------------------
  async function command(name, body, what) {
    let r;
    try {
      r = await fetch("/api/" + name, {
        method: "POST", credentials: "same-origin",
        // X-Requested-With: the console answers a 401 without a Basic challenge, which would
        // make the browser hold the request behind its own password dialog.
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-Requested-With": "emberwatch-page" },
        body: JSON.stringify(body),
      });
    } catch (e) {
      notice("error", what + ": the console did not answer (" + e.message + ")");
      return;
    }
    let text = "";
    try { text = await r.text(); } catch (e) { /* keep the status alone */ }
    let json = null;
    try { json = JSON.parse(text); } catch (e) { /* not JSON */ }
    // A gateway's cmd/result carries `reason`; the console's own refusals carry `error`.
    const reason = (json && (json.reason || json.error)) || text.slice(0, 200);
    // A command to the standby (or dead) gateway of a pair goes to the active one.
    const by = (json && json.answered_by) || body.gateway;
    if (r.status === 200) {
      notice("ok", what + ": done by gateway " + by + (reason ? " (" + reason + ")" : ""));
    } else if (r.status === 401) {
      notice("error", what + ": refused, log in first (401)");
      $("login").hidden = false;
      $("login-user").focus();
    } else if (r.status === 422) {
      notice("error", what + ": gateway " + by + " refused: " + (reason || "no reason given") + " (422)");
    } else if (r.status === 504) {
      notice("error", what + ": no answer from gateway " + body.gateway + " within 5 s; it may be offline (504)");
    } else {
      notice("error", what + ": HTTP " + r.status + (reason ? ": " + reason : ""));
    }
  }

  async function ack(a, button) {
    if (button) button.disabled = true;
    await command("ack", { site: a.site, gateway: a.gateway, alarm: a.alarm, zone: a.zone }, "Acknowledge " + a.alarm);
    if (button) button.disabled = false;
  }

  function shelve(a) {
    const dlg = $("shelve-dialog");
    $("shelve-alarm").textContent = a.alarm;
    $("shelve-reason").value = "";
    dlg.onclose = () => {
      if (dlg.returnValue !== "ok") return;
      command("shelve", {
        site: a.site, gateway: a.gateway, alarm: a.alarm, zone: a.zone,
        for: $("shelve-for").value, reason: $("shelve-reason").value,
      }, "Shelve " + a.alarm);
    };
    dlg.showModal();
  }

  // ---- live updates -----------------------------------------------------------------------
  function onAlarm(ev) {
    const t0 = performance.now();
    const a = JSON.parse(ev.data);
    const key = a.site + "|" + a.alarm;
    const old = state.alarms.get(key);
    // At-least-once delivery and replays may bring an older event after a newer one. The
    // console sends `alarm` only for the event an alarm shows after merging the two gateways
    // of a pair (by time between them), so an `alarm` is the whole new state.
    if (old && old.gateway === a.gateway && typeof old.seq === "number" && typeof a.seq === "number" && a.seq < old.seq) return;
    state.alarms.set(key, a);
    const p = state.partial;
    if (p) {
      // An alarm the first screen did not carry is counted as new: if it was one of those the
      // console counted, the count is one too high until the full list is in.
      const was = p.isa.get(key);
      const now = isaOf(a);
      if (was && was !== "normal") p.counts.set(was, (p.counts.get(was) || 0) - 1);
      if (now !== "normal") p.counts.set(now, (p.counts.get(now) || 0) + 1);
      p.isa.set(key, now);
      p.live.add(key);
    }
    redraw("alarms", t0);
  }

  // Stream messages that arrive before the board is drawn wait here (null once it is), then
  // apply over it in order: the page's first screen was read before the stream opened, so
  // none of them is older than it, and none is lost between the two.
  let held = [];
  const whenDrawn = (f) => (ev) => (held ? held.push(() => f(ev)) : f(ev));
  function drawn() {
    const waiting = held || [];
    held = null;
    waiting.forEach((f) => f());
  }

  function connect() {
    const es = new EventSource("/api/stream");
    let wasLost = false;
    es.onopen = () => {
      $("live").className = "live live-ok";
      $("live").textContent = "live";
      if (wasLost) loadAll(); // what happened while we were away
      wasLost = false;
    };
    es.onerror = () => {
      $("live").className = "live live-lost";
      $("live").textContent = "connection lost, retrying";
      wasLost = true;
    };
    es.addEventListener("alarm", whenDrawn(onAlarm));
    es.addEventListener("zone", whenDrawn((ev) => {
      const z = JSON.parse(ev.data);
      state.zones.set(z.site + "|" + z.zone, z);
      redraw("zones");
    }));
    es.addEventListener("gateway", whenDrawn((ev) => {
      const g = JSON.parse(ev.data);
      state.gateways.set(g.site + "|" + g.gateway, g);
      renderGateways();
    }));
    es.addEventListener("audit", whenDrawn((ev) => {
      state.audit.unshift(JSON.parse(ev.data));
      state.audit.length = Math.min(state.audit.length, 20);
      renderAudit();
    }));
    // The console dropped updates this page was too slow for: reload what it shows.
    es.addEventListener("lagged", whenDrawn(() => loadAll()));
    es.addEventListener("telemetry", (ev) => window.EmberTrend.telemetry(JSON.parse(ev.data)));
  }

  function tick() {
    $("clock").textContent = new Date().toLocaleTimeString([], { hour12: false });
  }

  let tiles, alarmRows;
  document.addEventListener("DOMContentLoaded", () => {
    tiles = keyed($("zones"));
    alarmRows = keyed($("alarm-rows"));
    if (new URLSearchParams(location.search).get("login") === "failed") {
      notice("error", "Login failed: wrong user name or password.");
      history.replaceState(null, "", "/");
    }
    tick();
    setInterval(tick, 1000);
    window.EmberTrend.init(notice);
    // The stream is opened only when reading is allowed; otherwise the login form is the page.
    // With the first screen inline, reading is allowed: the stream opens before the board is
    // drawn, so what changes meanwhile is not missed.
    const early = !!$("first-screen");
    if (early) connect();
    loadAll().then(() => {
      markReady();
      if (!early && state.me.can_read) connect();
      drawn();
    });
  });
})();
