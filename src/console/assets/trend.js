// The trend chart: one point over the last hour, day or week from /api/trends (min/max/last per
// bucket, the console's downsampled store), drawn with the vendored uPlot, and extended live from
// the telemetry on /api/stream. Kept apart from console.js so the board works even if the chart
// library failed to load. uPlot (50 KB) is fetched the first time a chart is drawn, not with the
// page: the board's first paint does not wait for a library most shifts never open.
"use strict";

window.EmberTrend = (function () {
  let notice = () => {};
  let current = null; // { site, device, point }
  let range = 3600;
  let plot = null;
  let data = [[], [], [], []]; // t (s), min, max, last
  const offered = new Set();

  const $ = (id) => document.getElementById(id);

  let library = null;
  /// Loads uPlot and its stylesheet once; resolves when done or failed (draw() says which).
  function loadLibrary() {
    if (!library) {
      library = new Promise((resolve) => {
        const css = document.createElement("link");
        css.rel = "stylesheet";
        css.href = "/assets/uPlot.min.css";
        document.head.append(css);
        const js = document.createElement("script");
        js.src = "/assets/uPlot.iife.min.js";
        js.onload = js.onerror = () => resolve();
        document.head.append(js);
      });
    }
    return library;
  }

  function init(noticeFn) {
    notice = noticeFn;
    $("trend-point").addEventListener("change", (e) => {
      const v = e.target.value;
      if (!v) return;
      const [site, device, point] = v.split("|");
      show(site, device, point);
    });
    for (const b of document.querySelectorAll(".range")) {
      b.addEventListener("click", () => {
        range = Number(b.dataset.range);
        for (const o of document.querySelectorAll(".range")) o.classList.toggle("on", o === b);
        if (current) load();
      });
    }
  }

  /// Adds points (site|device|point) to the chooser; never removes one the operator may be using.
  function offerPoints(points) {
    // One append for all the new options: a select relists its options on each insertion.
    const f = document.createDocumentFragment();
    for (const p of points) {
      if (offered.has(p)) continue;
      offered.add(p);
      const [site, device, point] = p.split("|");
      const o = document.createElement("option");
      o.value = p;
      o.textContent = site + " · " + device + "/" + point;
      f.append(o);
    }
    if (f.firstChild) $("trend-point").append(f);
  }

  function show(site, device, point) {
    offerPoints([site + "|" + device + "|" + point]);
    current = { site, device, point };
    $("trend-point").value = site + "|" + device + "|" + point;
    load();
    $("trend-h").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  async function load() {
    const c = current;
    const q = new URLSearchParams({ site: c.site, device: c.device, point: c.point, since: String(range) });
    $("trend-note").textContent = "loading…";
    const lib = loadLibrary();
    let rows;
    try {
      const r = await fetch("/api/trends?" + q, { credentials: "same-origin", headers: { "X-Requested-With": "emberwatch-page" } });
      if (!r.ok) throw new Error("HTTP " + r.status + " " + (await r.text()).slice(0, 200));
      rows = await r.json();
    } catch (e) {
      $("trend-note").textContent = "";
      notice("error", "Trend of " + c.device + "/" + c.point + ": " + e.message);
      return;
    }
    await lib;
    if (c !== current) return; // the operator chose another point meanwhile
    data = [[], [], [], []];
    for (const b of rows) {
      data[0].push(b.t / 1000);
      data[1].push(b.min);
      data[2].push(b.max);
      data[3].push(b.last);
    }
    $("trend-note").textContent = rows.length ? rows.length + " buckets" : "no data in this range yet";
    draw();
  }

  function draw() {
    const el = $("trend-chart");
    if (typeof uPlot === "undefined") {
      el.textContent = "The chart library did not load.";
      return;
    }
    if (plot) plot.destroy();
    const c = current;
    const opts = {
      width: Math.max(300, el.clientWidth - 16),
      height: 320,
      title: c.site + " · " + c.device + "/" + c.point,
      scales: { x: { time: true } },
      axes: [
        { stroke: "#c9d1d9", font: "15px sans-serif", grid: { stroke: "#30363d" }, ticks: { stroke: "#30363d" } },
        { stroke: "#c9d1d9", font: "15px sans-serif", size: 70, grid: { stroke: "#30363d" }, ticks: { stroke: "#30363d" } },
      ],
      series: [
        {},
        { label: "min", stroke: "#58a6ff", width: 1 },
        { label: "max", stroke: "#f0642a", width: 1 },
        { label: "last", stroke: "#e6edf3", width: 2 },
      ],
      bands: [{ series: [2, 1], fill: "rgba(88,166,255,0.15)" }],
    };
    el.replaceChildren();
    plot = new uPlot(opts, data, el);
  }

  /// A live telemetry message: appended when it is the point on show (hour view only, where a
  /// new sample is visible; longer views refresh on the next load).
  function telemetry(t) {
    const c = current;
    if (!c || !plot || range !== 3600 || t.site !== c.site || t.device !== c.device) return;
    const v = t.points ? t.points[c.point] : undefined;
    if (typeof v !== "number") return;
    const ts = Date.parse(t.time) / 1000;
    if (!Number.isFinite(ts)) return;
    data[0].push(ts);
    data[1].push(v);
    data[2].push(v);
    data[3].push(v);
    const cut = ts - range;
    while (data[0].length && (data[0][0] < cut || data[0].length > 4000)) {
      for (const s of data) s.shift();
    }
    plot.setData(data);
  }

  return { init, offerPoints, show, telemetry };
})();
