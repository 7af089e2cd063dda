/// The console's style sheet and script, served from memory (no build step, no Node).
enum ConsoleAssets {
    static let css = #"""
        :root { --bg:#f7f7f5; --fg:#1d2327; --muted:#6b7280; --line:#d9dde3; --ok:#2f9e44; --comp:#7048e8; --warn:#f08c00;
          --bad:#e03131; --run:#1c7ed6; --wait:#ca8a04; --card:#fff; }
        * { box-sizing: border-box; }
        body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background:var(--bg); color:var(--fg);
          display:grid; grid-template-columns: 1fr 260px; grid-template-rows: auto auto 1fr; min-height:100vh; }
        header { grid-column: 1 / 3; display:flex; gap:18px; align-items:center; padding:10px 20px; background:#1d2327; color:#eee; }
        header a { color:#eee; text-decoration:none; } .brand { font-weight:700; font-size:16px; }
        nav a { padding:6px 10px; border-radius:6px; } nav a.active, nav a:hover { background:#3a444c; }
        .where { color:#aab; font-size:12px; margin-left:auto; }
        .mode { padding:3px 8px; border-radius:10px; background:#3a444c; font-size:12px; } .mode.ro { background:#555; } .mode.op { background:#2b6a3a; }
        .live { font-size:12px; padding:3px 8px; border-radius:10px; } .live.on { background:#2b6a3a; } .live.off { background:#6a2b2b; }
        .live.on::before { content:"● "; color:#8ce99a; } .live.off::before { content:"○ "; }
        .flash { grid-column: 1 / 3; margin:10px 20px 0; padding:8px 12px; background:#e6fcf5; border:1px solid #63e6be; border-radius:6px; }
        main { padding: 8px 20px 40px; min-width:0; }
        aside { padding: 8px 12px; border-left:1px solid var(--line); font-size:12px; }
        aside h3 { margin:8px 0; } #event-log { padding-left:18px; margin:0; } #event-log li { margin-bottom:6px; }
        #event-log li.fresh { animation: flash 2s; } @keyframes flash { from { background:#fff3bf; } to { background:transparent; } }
        h1 { font-size:22px; margin:12px 0; } h2 { font-size:17px; margin:18px 0 8px; } h3 { font-size:14px; }
        a { color:#1864ab; } .mono, code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size:12.5px; }
        .quiet { color:var(--muted); } .err, .error { color:var(--bad); } .reason { color:#862e2e; }
        table { border-collapse:collapse; background:var(--card); width:100%; margin:6px 0 12px; }
        th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
        th { background:#eef0f3; font-weight:600; font-size:12.5px; } table.numbers td:not(:first-child) { text-align:right; }
        .badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; color:#fff; font-weight:600; }
        .badge.st-running { background:var(--run); } .badge.st-compensating { background:var(--comp); } .badge.st-completed { background:var(--ok); }
        .badge.st-compensated { background:#868e96; } .badge.st-needs-attention { background:var(--bad); } .badge.st-waiting { background:var(--wait); }
        .cards { display:flex; gap:12px; flex-wrap:wrap; } .card { display:flex; flex-direction:column; padding:10px 16px; min-width:130px;
          background:var(--card); border:1px solid var(--line); border-left:6px solid #999; border-radius:6px; color:inherit; text-decoration:none; }
        .card .n { font-size:26px; font-weight:700; } .card.st-needs-attention { border-left-color:var(--bad); } .card.st-running { border-left-color:var(--run); }
        .card.st-compensating { border-left-color:var(--comp); } .card.st-completed { border-left-color:var(--ok); } .card.st-compensated { border-left-color:#868e96; }
        .card.st-waiting { border-left-color:var(--wait); }
        section.attention h2 { color:#862e2e; }
        dl.facts { display:grid; grid-template-columns: 120px 1fr; gap:3px 12px; background:var(--card); padding:10px 14px; border:1px solid var(--line); border-radius:6px; }
        dl.facts dt { color:var(--muted); } dl.facts dd { margin:0; }
        section.next { background:#fff9db; border:1px solid #ffe066; border-radius:6px; padding:4px 14px; margin-top:12px; }
        section.next.finished { background:#ebfbee; border-color:#b2f2bb; } section.next.needs-operator { background:#fff5f5; border-color:#ffa8a8; }
        section.next.waiting-for-signal, section.wait { background:#fefce8; border:1px solid #facc15; border-radius:6px; padding:4px 14px; margin-top:12px; }
        section.next ul { margin:4px 0 10px; padding-left:20px; }
        .svc { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; color:#fff; font-weight:600; }
        .svc.ok { background:var(--ok); } .svc.degraded { background:var(--wait); } .svc.dead { background:var(--bad); }
        form.action { display:inline-flex; gap:8px; align-items:center; margin:4px 12px 4px 0; background:var(--card); padding:6px 10px; border:1px solid var(--line); border-radius:6px; }
        form.inline { display:inline; } button { font:inherit; padding:4px 12px; border-radius:5px; border:1px solid #868e96; background:#fff; cursor:pointer; }
        button.retry { background:var(--run); color:#fff; border-color:var(--run); } button.compensate { background:var(--comp); color:#fff; border-color:var(--comp); } button.signal { background:var(--wait); color:#fff; border-color:var(--wait); }
        button.link { border:none; background:none; color:#ccd; text-decoration:underline; padding:0; font-size:12px; }
        form.filters { display:flex; flex-wrap:wrap; gap:10px; align-items:center; background:var(--card); padding:8px 12px; border:1px solid var(--line); border-radius:6px; }
        form.filters fieldset { border:none; padding:0; margin:0; display:flex; gap:8px; } form.filters legend { float:left; margin-right:6px; color:var(--muted); }
        input.short { width:60px; } form.login { display:flex; flex-direction:column; gap:10px; max-width:420px; } form.login input { display:block; width:100%; padding:5px; }
        section.two { display:grid; grid-template-columns: 1fr 1fr; gap:16px; } pre { background:var(--card); border:1px solid var(--line); padding:8px; overflow:auto; margin:0; }
        .legend .key, p .key { display:inline-block; width:14px; height:10px; margin:0 3px 0 10px; border-radius:2px; vertical-align:middle; }
        .key.ok { background:var(--ok); } .key.ok-comp { background:var(--comp); } .key.retrying { background:var(--warn); } .key.failed { background:var(--bad); }
        .key.wait { background:#adb5bd; height:3px; } .key.operator { background:#e8590c; transform:rotate(45deg); width:9px; height:9px; }
        .key.reaper { background:#495057; transform:rotate(45deg); width:9px; height:9px; } .key.started { background:var(--run); } .key.finished { background:var(--ok); }
        svg { background:var(--card); border:1px solid var(--line); border-radius:6px; display:block; margin:6px 0; }
        svg text { font: 12px system-ui, sans-serif; fill:var(--fg); } svg text.axis, svg text.note { fill:var(--muted); font-size:11px; }
        svg text.err { fill:var(--bad); font-size:11px; } svg .grid { stroke:#eceef1; } svg .now { stroke:var(--run); stroke-dasharray:3 3; }
        svg rect.bar.ok { fill:var(--ok); } svg rect.bar.ok-comp { fill:var(--comp); } svg rect.bar.retrying { fill:var(--warn); } svg rect.bar.failed { fill:var(--bad); }
        svg rect.bar.other { fill:#868e96; } svg line.wait { stroke:#adb5bd; stroke-width:2; } svg line.wait.retry { stroke:var(--warn); stroke-dasharray:4 3; }
        svg rect.span { fill:#d0ebff; } svg rect.span.st-completed { fill:#b2f2bb; } svg rect.span.st-compensated { fill:#dee2e6; }
        svg rect.span.st-needs-attention { fill:#ffc9c9; } svg rect.span.st-compensating { fill:#e5dbff; } svg rect.span.st-waiting { fill:#fef08a; }
        svg path.marker.operator { fill:#e8590c; } svg path.marker.reaper { fill:#495057; }
        svg rect.step { fill:#e7f5ff; stroke:var(--run); stroke-width:1.5; } svg rect.step.pivot { fill:#fff3bf; stroke:#f08c00; stroke-width:3; }
        svg rect.step.forward { fill:#f1f3f5; stroke:#495057; } svg rect.comp { fill:#f3f0ff; stroke:var(--comp); stroke-dasharray:5 3; }
        svg text.step-name { font-weight:600; } svg text.step-detail { font-size:11px; fill:#495057; }
        svg line.flow { stroke:#495057; stroke-width:1.5; } svg line.fail { stroke:var(--bad); stroke-dasharray:4 3; } svg line.back { stroke:var(--comp); stroke-width:1.5; }
        svg .arrowhead { fill:#495057; } svg circle.endpoint { fill:#495057; } svg circle.endpoint.done { fill:var(--ok); }
        svg rect.started { fill:var(--run); } svg rect.finished { fill:var(--ok); } .graph-box { overflow:auto; }
        svg rect.group { fill:#f8fbff; stroke:#1c7ed6; stroke-dasharray:6 4; } svg text.group-name { font-weight:600; fill:#1864ab; }
        svg line.fork { stroke:#495057; stroke-width:4; } svg text.step-when { font-size:11px; fill:#5f3dc4; font-style:italic; }
        svg rect.step.st-completed { fill:#d3f9d8; stroke:var(--ok); } svg rect.step.st-running { fill:#d0ebff; stroke:var(--run); stroke-width:3; }
        svg rect.step.st-failed { fill:#ffe3e3; stroke:var(--bad); stroke-width:2; } svg rect.step.st-skipped { fill:#f8f9fa; stroke:#adb5bd; stroke-dasharray:3 3; }
        svg rect.step.st-compensated, svg rect.step.st-compensating { fill:#e5dbff; } svg rect.comp.st-compensated { fill:#d0bfff; }
        svg rect.step.wait { fill:#fefce8; stroke:var(--wait); stroke-width:1.5; stroke-dasharray:7 3; } svg text.step-wait { font-size:10px; fill:#854d0e; }
        svg rect.step.st-waiting { fill:#fef08a; stroke:var(--wait); stroke-width:3; } svg text.step-state.st-waiting { fill:#854d0e; }
        svg text.signal { font-size:11px; fill:#854d0e; font-weight:600; } svg line.timeout { stroke:var(--wait); stroke-dasharray:2 3; stroke-width:1.5; }
        svg text.step-state { font-size:11px; font-weight:600; } svg text.step-state.st-failed { fill:var(--bad); } svg text.step-state.st-running { fill:var(--run); }
        ul.members { list-style:none; padding:0; display:flex; flex-wrap:wrap; gap:8px; } ul.members li { padding:4px 10px; border-radius:5px; border:1px solid var(--line); background:var(--card); }
        ul.members li.st-completed { border-color:var(--ok); } ul.members li.st-running { border-color:var(--run); } ul.members li.st-failed { border-color:var(--bad); }
        table.dlq pre { max-width:420px; white-space:pre-wrap; }
        """#

    static let javascript = #"""
        // Live updates: the lifecycle events arrive as server-sent events; the page's main part is
        // fetched again and swapped in (no reload), and the event is added to the side list.
        (function () {
          "use strict";
          var saga = document.body.dataset.saga || "";
          var status = document.getElementById("live-status");
          var log = document.getElementById("event-log");
          var timer = null;
          // A form someone has changed (a box ticked, a field typed in) is never replaced: the
          // page stops refreshing until it is submitted or left.
          var edited = false;
          document.addEventListener("input", function () { edited = true; }, true);
          document.addEventListener("change", function () { edited = true; }, true);
          function busy() {
            var active = document.activeElement;
            return edited || (active && (active.tagName === "INPUT" || active.tagName === "SELECT" || active.tagName === "TEXTAREA"));
          }
          function refresh() {
            timer = null;
            if (busy()) { timer = setTimeout(refresh, 2000); return; }  // do not replace a form someone is filling in
            fetch(location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
              .then(function (r) { return r.text(); })
              .then(function (text) {
                if (busy()) { schedule(); return; }  // they started while the page was being fetched
                var doc = new DOMParser().parseFromString(text, "text/html");
                var fresh = doc.getElementById("live");
                if (fresh) { document.getElementById("live").innerHTML = fresh.innerHTML; bindConfirms(); }
                document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || "0") + 1);
              });
          }
          function schedule() {
            if (document.body.dataset.refresh === "off") { return; }
            if (!timer) { timer = setTimeout(refresh, 400); }
          }
          function describe(e) {
            var text = e.sagaName + " " + e.kind;
            if (e.stepName) { text += " · " + e.stepName; }
            if (e.actor) { text += " · by " + e.actor; }
            if (e.error) { text += " · " + e.error; } else if (e.reason) { text += " · " + e.reason; }
            return text;
          }
          if (window.EventSource) {
            var source = new EventSource("/events" + (saga ? "?saga=" + encodeURIComponent(saga) : ""));
            // Events between the page's rendering and this subscription are missed: catch up once.
            source.addEventListener("open", function () { document.body.dataset.sse = "open"; schedule(); });
            source.addEventListener("status", function (m) {
              var up = JSON.parse(m.data).connected;
              status.className = "live " + (up ? "on" : "off");
              status.title = up ? "live: receiving saga lifecycle events" : "live updates paused: the console cannot reach the events exchange";
            });
            source.addEventListener("saga", function (m) {
              var e = JSON.parse(m.data);
              var item = document.createElement("li");
              item.className = "fresh";
              var link = document.createElement("a");
              link.href = "/sagas/" + encodeURIComponent(e.sagaID);
              link.textContent = e.sagaID.slice(0, 8);
              item.appendChild(link);
              item.appendChild(document.createTextNode(" " + describe(e)));
              log.insertBefore(item, log.firstChild);
              while (log.children.length > 30) { log.removeChild(log.lastChild); }
              document.body.dataset.events = String(Number(document.body.dataset.events || "0") + 1);
              schedule();
            });
            source.addEventListener("error", function () { status.className = "live off"; });
            // Give the connection back when leaving the page (a browser keeps few per host); a page
            // restored from the back-forward cache is loaded again to be current.
            window.addEventListener("pagehide", function () { source.close(); });
            window.addEventListener("pageshow", function (event) { if (event.persisted) { location.reload(); } });
          }
          // Every action asks first.
          function bindConfirms() {
            document.querySelectorAll("form[data-confirm]").forEach(function (form) {
              if (form.dataset.bound) { return; }
              form.dataset.bound = "1";
              form.addEventListener("submit", function (event) {
                if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
              });
            });
          }
          bindConfirms();
        })();
        """#
}
