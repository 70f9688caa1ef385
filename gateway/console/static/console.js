// Sluice console: the only script. Forms with data-confirm ask before they submit; the
// Live page follows the event stream. Event fields are shown as text, never as markup.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

function describe(e) {
  const parts = [new Date(e.timestamp * 1000).toISOString().replace("T", " ").slice(0, 19), e.type, e.email || ""];
  for (const key of ["campaign", "provider", "ip", "smtp_code", "bounce_class", "reason", "url"]) {
    if (e[key] !== undefined && e[key] !== null && e[key] !== "") parts.push(key + ": " + e[key]);
  }
  if (e.machine) parts.push("machine");
  return parts.join(" · ");
}

function follow() {
  const list = document.getElementById("events");
  const state = document.getElementById("live-state");
  const filter = document.getElementById("live-filter");
  if (!list || !filter) return;
  let source = null;
  const start = () => {
    if (source) source.close();
    const types = document.getElementById("live-type").value.trim();
    source = new EventSource("/ui/live/stream" + (types ? "?type=" + encodeURIComponent(types) : ""));
    source.onopen = () => { state.textContent = "Following" + (types ? " " + types : " every event") + "."; };
    source.onerror = () => { state.textContent = "Disconnected; reconnecting…"; };
    source.onmessage = null;
    const show = (message) => {
      const item = document.createElement("li");
      item.textContent = describe(JSON.parse(message.data));
      list.prepend(item);
      while (list.children.length > 500) list.lastChild.remove();
    };
    for (const kind of ["queued", "delivered", "deferred", "bounced", "expired", "suppressed", "capped",
                        "opened", "clicked", "unsubscribed", "complained", "released", "cancelled",
                        "alert_fired", "alert_resolved"]) {
      source.addEventListener(kind, show);
    }
  };
  filter.addEventListener("submit", (event) => { event.preventDefault(); list.replaceChildren(); start(); });
  start();
}

document.addEventListener("DOMContentLoaded", follow);
