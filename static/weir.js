// Weir console: progressive enhancement only. Every page works without this file.
"use strict";

// Confirm destructive actions.
document.addEventListener("submit", (event) => {
  const message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) event.preventDefault();
});

// A file input fills the text area it names, so uploads need no multipart form.
document.addEventListener("change", (event) => {
  const into = event.target.getAttribute && event.target.getAttribute("data-into");
  const file = event.target.files && event.target.files[0];
  if (!into || !file) return;
  file.text().then((text) => { document.getElementById(into).value = text; });
});

// The overview refreshes itself every two seconds and draws the message rates as sparklines.
(function overview() {
  const root = document.getElementById("overview");
  if (!root) return;
  const history = { in_rate: [], out_rate: [] };
  const draw = (canvas, values) => {
    const ctx = canvas.getContext("2d");
    const max = Math.max(1, ...values);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#0b5cad";
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = (i / 59) * canvas.width;
      const y = canvas.height - (v / max) * (canvas.height - 2) - 1;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  };
  const refresh = () => {
    fetch(root.getAttribute("data-refresh"), { headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((data) => {
        document.querySelectorAll("[data-key]").forEach((el) => {
          const key = el.getAttribute("data-key");
          if (key in data) el.textContent = String(data[key]);
        });
        for (const key of Object.keys(history)) {
          history[key].push(data[key] || 0);
          if (history[key].length > 60) history[key].shift();
          const canvas = document.querySelector(`canvas[data-series="${key}"]`);
          if (canvas) draw(canvas, history[key]);
        }
      })
      .catch(() => {});
  };
  refresh();
  setInterval(refresh, 2000);
})();

// A section that names a partial (the Kafka status) is fetched again every two seconds while the page is seen.
// The server renders it escaped, as it rendered the page.
(function partials() {
  const section = document.querySelector("[data-partial]");
  if (!section) return;
  setInterval(() => {
    if (document.hidden) return;
    fetch(section.getAttribute("data-partial"), { headers: { Accept: "text/html" } })
      // Redirected: signed out meanwhile; the login page is not a status.
      .then((r) => (r.ok && !r.redirected ? r.text() : Promise.reject(r.status)))
      .then((html) => { section.innerHTML = html; section.setAttribute("data-refreshed", String(Date.now())); })
      .catch(() => {});
  }, 2000);
})();

// Payload bytes (base64) as the operator chose to see them. Always set with textContent, never as markup.
function showPayload(base64, view) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  if (view === "hex") return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const text = new TextDecoder().decode(bytes);
  if (view === "json") {
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return text; }
  }
  return text;
}

// The live view of a topic filter: server-sent events, newest first, at most 500 rows, with pause.
(function live() {
  const table = document.getElementById("live");
  if (!table) return;
  const body = table.tBodies[0];
  const status = document.getElementById("live-status");
  const pause = document.getElementById("live-pause");
  const view = document.getElementById("live-view");
  let paused = false;
  let held = [];
  const add = (m) => {
    const row = body.insertRow(0);
    const cells = [new Date(m.ts).toISOString().replace("T", " ").slice(0, 23), m.topic, String(m.qos)];
    for (const text of cells) row.insertCell().textContent = text;
    const pre = document.createElement("pre");
    pre.className = "payload";
    pre.textContent = showPayload(m.payload, view.value);
    row.insertCell().appendChild(pre);
    while (body.rows.length > 500) body.deleteRow(-1);
  };
  const source = new EventSource(table.getAttribute("data-stream"));
  source.onopen = () => { status.textContent = "Watching."; table.setAttribute("data-open", "yes"); };
  source.onerror = () => { status.textContent = "Disconnected; reconnecting…"; };
  source.onmessage = (event) => {
    const m = JSON.parse(event.data);
    if (paused) {
      held.push(m);
      if (held.length > 500) held.shift();
      status.textContent = `Paused: ${held.length} new messages held.`;
    } else {
      add(m);
    }
  };
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) {
      held.forEach(add);
      held = [];
      status.textContent = "Watching.";
    }
  });
})();

// The history chart: numeric values over time, drawn with uPlot once it has loaded.
window.addEventListener("load", () => {
  const el = document.getElementById("chart");
  if (!el || !window.uPlot) return;
  fetch(el.getAttribute("data-series"), { headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
    .then((data) => {
      if (data.t.length === 0) {
        el.textContent = "No numeric values to chart in this range.";
        el.setAttribute("data-drawn", "empty");
        return;
      }
      const options = {
        width: Math.max(300, el.clientWidth),
        height: 300,
        series: [{}, { label: "value", stroke: "#0b5cad", width: 1.5 }],
      };
      new window.uPlot(options, [data.t, data.v], el);
      el.setAttribute("data-drawn", String(data.t.length));
    })
    .catch(() => { el.textContent = "The chart could not be loaded."; });
});

// Restore: the backup file goes up as it is (no multipart), with the passphrase and the CSRF token as headers.
(function restore() {
  const form = document.getElementById("restore");
  if (!form) return;
  const status = document.getElementById("restore-status");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = document.getElementById("restore-file").files[0];
    if (!file) return;
    status.textContent = "Checking the backup…";
    fetch("/backup/restore", {
      method: "POST",
      headers: {
        "Content-Type": "application/octet-stream",
        "X-CSRF-Token": form.getAttribute("data-csrf"),
        "X-Weir-Passphrase": encodeURIComponent(document.getElementById("restore-passphrase").value),
      },
      body: file,
    })
      .then((r) => r.text().then((text) => ({ ok: r.ok, text })))
      .then(({ ok, text }) => { status.textContent = ok ? text : `Refused: ${text}`; })
      .catch(() => { status.textContent = "The upload failed."; });
  });
})();
