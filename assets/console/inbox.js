// The inbox's live updates: new flags that match the filters arrive by
// server-sent events and are added at the top of the table. Every value
// is set as text, never as HTML. The browser reconnects by itself after a
// dropped connection and sends the last event's id, so nothing is missed.
(function () {
  "use strict";
  var table = document.getElementById("flags");
  if (!table || !window.EventSource) { return; }
  var source = table.getAttribute("data-events");
  if (!source) { return; }
  var body = table.tBodies[0];
  var live = document.getElementById("live");
  var arrived = 0;

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function link(row, href, text) {
    var td = document.createElement("td");
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    td.appendChild(a);
    row.appendChild(td);
  }

  var events = null;
  var lastId = "";

  // The feed from where this page left off: the cursor the page was
  // rendered at, or the last event it got before it was put away.
  function feed() {
    if (!lastId) { return source; }
    var after = "after=" + encodeURIComponent(lastId);
    if (/[?&]after=/.test(source)) { return source.replace(/([?&])after=[^&]*/, "$1" + after); }
    return source + (source.indexOf("?") < 0 ? "?" : "&") + after;
  }

  function open() {
    events = new EventSource(feed());
    events.addEventListener("flag", arrive);
  }

  // A page kept in the back/forward cache would keep its stream open, and
  // a browser gives one host only six connections over HTTP/1.1: a few
  // cached inboxes and the next page waits. The stream closes when the page
  // is put away and opens again, where it left off, when it comes back.
  window.addEventListener("pagehide", function () {
    if (events) { events.close(); events = null; }
  });
  window.addEventListener("pageshow", function (event) {
    if (event.persisted && !events) { open(); }
  });

  function arrive(event) {
    if (event.lastEventId) { lastId = event.lastEventId; }
    var flag;
    try { flag = JSON.parse(event.data); } catch (e) { return; }
    var id = String(Number(flag.id));
    if (body.querySelector('tr[data-flag-id="' + id + '"]')) { return; }
    var row = document.createElement("tr");
    row.setAttribute("data-flag-id", id);
    row.className = "new";
    link(row, "/flags/" + id, "#" + id);
    var sev = document.createElement("span");
    sev.className = "sev sev-" + String(flag.severity).replace(/[^A-Z]/g, "");
    sev.textContent = flag.severity;
    cell(row, "").appendChild(sev);
    cell(row, flag.rule_id);
    cell(row, flag.status).className = "status";
    cell(row, flag.clinic_id);
    cell(row, flag.hospital_id);
    link(row, "/records/" + String(Number(flag.record_id)), flag.external_record_id);
    cell(row, flag.raised_at);
    body.insertBefore(row, body.firstChild);
    var empty = document.getElementById("empty");
    if (empty) { empty.parentNode.removeChild(empty); }
    arrived += 1;
    if (live) { live.textContent = arrived + (arrived === 1 ? " new flag" : " new flags") + " since the page was opened."; }
  }

  open();
}());
