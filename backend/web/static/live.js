// Live power, progressively enhanced: the page works without it; this polls the household's
// live.json every 3 s and fills in the unsigned telemetry of each meter.
(function () {
  "use strict";
  var box = document.getElementById("live");
  if (!box || !window.fetch) { return; }
  var url = box.getAttribute("data-url");
  function watts(w) {
    if (w === null) { return "–"; }
    return Math.abs(w) >= 1000 ? (w / 1000).toFixed(2) + " kW" : w + " W";
  }
  function update(data) {
    data.meters.forEach(function (m) {
      var sel = 'li[data-device="' + CSS.escape(m.device) + '"][data-meter="' + CSS.escape(m.meter) + '"]';
      var row = box.querySelector(sel);
      if (!row) { return; }
      row.classList.toggle("stale", m.time === null);
      row.querySelector('[data-field="power"]').textContent =
        m.time === null ? "no live data" : watts(m.power_w) + (m.power_w < 0 ? " export" : "");
      row.querySelector('[data-field="voltage"]').textContent = m.voltage_dv.map(function (v) {
        return (v / 10).toFixed(1) + " V";
      }).join(" · ");
      row.setAttribute("data-time", m.time === null ? "" : String(m.time));
    });
  }
  function poll() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) { update(data); } })
      .catch(function () {})
      .then(function () { setTimeout(poll, 3000); });
  }
  poll();
})();
