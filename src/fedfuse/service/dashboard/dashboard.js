// fedfuse dashboard: live charts (uPlot) and tables from the run's server-sent events.
// The page works without this file (the server renders the tables); this adds the charts and
// keeps charts and tables current. Tests and benchmarks read `data-points` on #live.
(function () {
  "use strict";
  const live = document.getElementById("live");
  if (!live || typeof EventSource === "undefined") return;

  const CHARTS = {
    federation: [
      { id: "accuracy", title: "accuracy", keys: ["central_accuracy", "federated_accuracy", "train_accuracy"] },
      { id: "loss", title: "loss", keys: ["central_loss", "federated_loss", "train_loss"] },
      { id: "bytes", title: "bytes per round", keys: ["bytes_up", "bytes_down"], bytes: true },
      { id: "privacy", title: "privacy budget spent (epsilon)", keys: ["epsilon"] },
    ],
    consensus: [
      { id: "accuracy", title: "accuracy (nodes' mean, min, max)", keys: ["mean_accuracy", "min_accuracy", "max_accuracy"] },
      { id: "distance", title: "consensus distance", keys: ["consensus_distance"] },
      { id: "nodes", title: "each node's accuracy", nodes: true },
    ],
  };
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
  const kind = live.dataset.kind === "consensus" ? "consensus" : "federation";
  let points = [];
  let charts = {};

  function value(point, key) {
    if (key.startsWith("node:")) return (point.nodes || {})[key.slice(5)] ?? null;
    return point[key] ?? null;
  }

  // the series of a chart that have data (a chart with none is not drawn)
  function keysOf(spec) {
    let keys = spec.keys;
    if (spec.nodes) {
      const ids = new Set();
      points.forEach((p) => Object.keys(p.nodes || {}).forEach((id) => ids.add(id)));
      keys = Array.from(ids).sort().map((id) => "node:" + id);
    }
    return keys.filter((k) => points.some((p) => value(p, k) !== null));
  }

  function dataOf(keys) {
    return [points.map((p) => p.x), ...keys.map((k) => points.map((p) => value(p, k)))];
  }

  function bytes(n) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toPrecision(3) : String(n)) + " " + units[i];
  }

  function width() {
    return Math.max(300, Math.min(900, live.clientWidth || 600));
  }

  function build(spec, keys) {
    const box = document.createElement("div");
    box.className = "chart";
    box.id = "chart-" + spec.id;
    live.appendChild(box);
    const series = [{ label: kind === "consensus" ? "epoch" : "round" }].concat(
      keys.map((k, i) => ({
        label: k.replace("node:", "node ").replace(/_/g, " "),
        stroke: COLORS[i % COLORS.length],
        width: 2,
        points: { show: true },
      })),
    );
    const plot = new uPlot(
      {
        title: spec.title,
        width: width(),
        height: 220,
        series: series,
        scales: { x: { time: false } },
        axes: [
          { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] },
          spec.bytes ? { size: 70, values: (u, ticks) => ticks.map(bytes) } : {},
        ],
      },
      dataOf(keys),
      box,
    );
    return { box: box, plot: plot, keys: keys };
  }

  function draw() {
    CHARTS[kind].forEach((spec) => {
      const keys = keysOf(spec);
      let chart = charts[spec.id];
      if (chart && chart.keys.join() !== keys.join()) {
        chart.plot.destroy();
        chart.box.remove();
        chart = charts[spec.id] = undefined;
      }
      if (!chart && keys.length) chart = charts[spec.id] = build(spec, keys);
      if (chart) chart.plot.setData(dataOf(keys));
    });
    live.dataset.points = String(points.length);
    live.dataset.lastRound = String(points.length ? points[points.length - 1].x : 0);
  }

  function cell(v) {
    const td = document.createElement("td");
    if (v === null || v === undefined) td.textContent = "\u2013";
    else if (typeof v === "number" && !Number.isInteger(v)) td.textContent = v.toPrecision(4).replace(/\.?0+$/, "");
    else td.textContent = String(v);
    return td;
  }

  function rowsTable() {
    const table = document.getElementById("rounds");
    if (!table) return;
    const keys = Array.from(table.tHead.rows[0].cells).map((th) => th.dataset.key);
    const body = table.tBodies[0];
    body.replaceChildren(
      ...points.map((p) => {
        const tr = document.createElement("tr");
        keys.forEach((k) => tr.appendChild(cell(p[k])));
        return tr;
      }),
    );
  }

  function partiesTable(rows) {
    const table = document.getElementById("parties");
    if (!table) return;
    table.tBodies[0].replaceChildren(
      ...rows.map((r) => {
        const tr = document.createElement("tr");
        tr.dataset.state = r.state;
        [r.party, r.name, r.state, r.reason].forEach((v) => tr.appendChild(cell(v)));
        return tr;
      }),
    );
  }

  function status(s) {
    const el = document.getElementById("status");
    if (el) el.textContent = s.status + (s.error ? " (" + s.error + ")" : "");
  }

  function update() {
    draw();
    rowsTable();
  }

  const source = new EventSource(live.dataset.events);
  source.addEventListener("snapshot", (e) => {
    const view = JSON.parse(e.data);
    live.dataset.connected = "true";
    points = view.points;
    update();
    partiesTable(view.parties);
    status(view);
  });
  source.addEventListener("round", (e) => {
    const point = JSON.parse(e.data);
    if (points.length && point.x <= points[points.length - 1].x) return;
    points.push(point);
    update();
  });
  source.addEventListener("parties", (e) => partiesTable(JSON.parse(e.data)));
  source.addEventListener("status", (e) => status(JSON.parse(e.data)));
  source.addEventListener("end", () => {
    source.close();
    live.dataset.ended = "true";
  });
  window.addEventListener("resize", () => {
    Object.values(charts).forEach((c) => c.plot.setSize({ width: width(), height: 220 }));
  });
})();
