// mcp-coordinator console: live updates only. Every decision works without this script.
// An element with data-live="NAME" is replaced by the server's fragment for NAME whenever
// the event stream at /events sends one (server-sent events; the browser reconnects).
(function () {
  "use strict";
  var live = document.querySelectorAll("[data-live]");
  if (!live.length || !window.EventSource) { return; }
  var names = [];
  live.forEach(function (el) { names.push(el.getAttribute("data-live")); });
  var source = new EventSource("/events?sections=" + encodeURIComponent(names.join(",")));
  names.forEach(function (name) {
    source.addEventListener(name, function (event) {
      var el = document.querySelector('[data-live="' + name + '"]');
      if (el) { el.innerHTML = event.data; el.setAttribute("data-updated", String(Date.now())); }
    });
  });
  source.onerror = function () {
    document.documentElement.setAttribute("data-live-state", "reconnecting");
  };
  source.onopen = function () {
    document.documentElement.setAttribute("data-live-state", "open");
  };
})();
