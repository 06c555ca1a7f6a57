// flytecache web view: local times, lease countdowns and copy buttons. The pages read the
// same without it; nothing here fetches anything.
(function () {
  "use strict";
  var serverNow = Number(document.body.getAttribute("data-now-ms")) || Date.now();
  // The server's clock decides expiry; count down against it, not the viewer's.
  var skew = serverNow - Date.now();

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function zone(date) {
    var minutes = -date.getTimezoneOffset();
    var sign = minutes < 0 ? "-" : "+";
    minutes = Math.abs(minutes);
    return "UTC" + sign + pad(Math.floor(minutes / 60)) + ":" + pad(minutes % 60);
  }
  function local(date) {
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) +
      " " + pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds());
  }

  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var date = new Date(el.getAttribute("datetime"));
    if (!isNaN(date)) {
      el.title = el.textContent;
      el.textContent = local(date);
    }
  });
  document.querySelectorAll(".tz").forEach(function (el) { el.textContent = zone(new Date()); });

  var leases = document.querySelectorAll("td.left[data-expires-ms]");
  function tick() {
    var now = Date.now() + skew;
    leases.forEach(function (el) {
      var left = (Number(el.getAttribute("data-expires-ms")) - now) / 1000;
      var row = el.parentElement;
      if (left > 0) {
        el.textContent = left.toFixed(1) + " s";
      } else {
        el.textContent = "expired";
        row.classList.remove("active");
        row.classList.add("expired");
      }
    });
  }
  if (leases.length) { tick(); setInterval(tick, 200); }

  function copied(button) {
    button.classList.add("done");
    setTimeout(function () { button.classList.remove("done"); }, 1500);
  }
  document.querySelectorAll("button.copy").forEach(function (button) {
    button.addEventListener("click", function () {
      var text = button.getAttribute("data-copy");
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { copied(button); });
        return;
      }
      // Plain http to another host is not a secure context: the old way still works.
      var area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
      copied(button);
    });
  });
})();
