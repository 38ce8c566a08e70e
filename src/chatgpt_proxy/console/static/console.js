// The console's own script: charts from data-chart attributes, the copy button, confirmations.
// Loaded from the proxy itself (the page's CSP allows no inline script and no other origin).
(function () {
  "use strict";

  function drawCharts(root) {
    root.querySelectorAll("[data-chart]").forEach(function (el) {
      if (typeof uPlot === "undefined") return;
      var spec = JSON.parse(el.getAttribute("data-chart"));
      el.textContent = "";
      if (!spec.labels.length) return;
      var names = spec.series.map(function (s) { return s[0]; });
      var xs = spec.labels.map(function (_, i) { return i; });
      var colors = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
      var short = function (label) { return /^\d{4}-\d\d-\d\d$/.test(label) ? label.slice(5) : label; };
      var opts = {
        width: Math.max(el.clientWidth, 300),
        height: 220,
        scales: {
          x: {
            time: false,
            // Bars are centred on their value: half a step of room at each end.
            range: function (u, min, max) { return spec.bars ? [min - 0.5, max + 0.5] : [min, max]; },
          },
        },
        axes: [
          { values: function (u, ticks) { return ticks.map(function (t) { return short(spec.labels[t] || ""); }); } },
          {},
        ],
        series: [{ label: spec.xlabel || "", value: function (u, v) { return v == null ? "" : spec.labels[v]; } }].concat(
          names.map(function (name, i) {
            var s = { label: name, stroke: colors[i % colors.length], width: 2 };
            if (spec.bars) {
              s.fill = colors[i % colors.length] + "55";
              s.paths = uPlot.paths.bars({ size: [0.6, 60] });
              s.points = { show: false };
            }
            return s;
          })
        ),
      };
      var data = [xs].concat(spec.series.map(function (s) { return s[1]; }));
      new uPlot(opts, data, el);
    });
  }

  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
  document.addEventListener("htmx:afterSwap", function (e) { drawCharts(e.target); });

  document.addEventListener("click", function (e) {
    var copy = e.target.closest("[data-copy]");
    if (copy) {
      var input = document.getElementById(copy.getAttribute("data-copy"));
      input.select();
      if (navigator.clipboard) navigator.clipboard.writeText(input.value).catch(function () {});
      copy.textContent = "Copied";
    }
    var confirmer = e.target.closest("[data-confirm]");
    if (confirmer && !window.confirm(confirmer.getAttribute("data-confirm"))) e.preventDefault();
  });
})();
