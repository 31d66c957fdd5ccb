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
