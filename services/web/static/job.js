// The live job page: an EventSource fed from WatchJob. Log text only ever goes through
// textContent, so a line like <img src=x onerror=alert(1)> shows as text.
(function () {
  "use strict";

  function $(id) { return document.getElementById(id); }

  function parseTime(value) {
    var time = value ? Date.parse(value) : NaN;
    return isNaN(time) ? null : time;
  }

  function formatElapsed(ms) {
    var seconds = Math.max(0, Math.floor(ms / 1000));
    var hours = Math.floor(seconds / 3600);
    var minutes = Math.floor((seconds % 3600) / 60);
    var rest = seconds % 60;
    var text = (hours ? hours + "h " : "") + (hours || minutes ? minutes + "m " : "") + rest + "s";
    return text;
  }

  function formatBytes(bytes) {
    var units = ["B", "KB", "MB", "GB"];
    var index = 0;
    while (bytes >= 1024 && index < units.length - 1) { bytes /= 1024; index += 1; }
    return (index ? bytes.toFixed(1) : String(bytes)) + " " + units[index];
  }

  document.addEventListener("DOMContentLoaded", function () {
    var root = $("job");
    if (!root) return;
    var log = $("log");
    var state = $("log-state");
    var status = $("job-status");
    var errorBox = $("job-error");
    var cancelForm = $("cancel-form");
    var started = parseTime(root.dataset.started);
    var completed = parseTime(root.dataset.completed);
    var lastSeq = 0;
    var follow = true;
    var finished = false;
    var terminal = false;

    log.addEventListener("scroll", function () {
      follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      root.dataset.follow = follow ? "yes" : "no";
    });

    function tick() {
      var elapsed = $("elapsed");
      if (started === null) { elapsed.textContent = "not started"; return; }
      elapsed.textContent = formatElapsed((completed === null ? Date.now() : completed) - started);
    }
    tick();
    var timer = window.setInterval(tick, 1000);

    var source = new EventSource(root.dataset.events);
    source.addEventListener("open", function () { state.textContent = finished ? "" : "live"; });
    source.addEventListener("lines", function (event) {
      var data = JSON.parse(event.data);
      var fragment = document.createDocumentFragment();
      data.lines.forEach(function (line) {
        if (line.seq <= lastSeq) return;
        lastSeq = line.seq;
        var row = document.createElement("div");
        row.className = "line " + (line.stream === "stderr" ? "stderr" : "stdout");
        row.dataset.seq = String(line.seq);
        row.textContent = line.text;
        fragment.appendChild(row);
      });
      log.appendChild(fragment);
      if (follow) log.scrollTop = log.scrollHeight;
    });
    source.addEventListener("job", function (event) {
      var job = JSON.parse(event.data);
      status.textContent = job.status;
      status.className = "badge job-" + job.status;
      root.dataset.status = job.status;
      started = parseTime(job.started_at);
      completed = parseTime(job.completed_at);
      tick();
      if (job.error) { errorBox.textContent = job.error; errorBox.hidden = false; }
      if (job.terminal) {
        terminal = true;
        if (cancelForm) cancelForm.hidden = true;
        $("progress").hidden = true;
        window.clearInterval(timer);
      }
    });
    source.addEventListener("progress", function (event) {
      if (terminal) return;
      var progress = JSON.parse(event.data);
      var box = $("progress");
      var bar = $("progress-bar");
      box.hidden = false;
      $("progress-phase").textContent = progress.phase;
      var phases = root.dataset.phases ? root.dataset.phases.split(",") : [];
      if (phases.indexOf(progress.phase) === -1) {
        phases.push(progress.phase);
        root.dataset.phases = phases.join(",");  // the phases seen, in order
      }
      var done = progress.bytes_total ? progress.bytes_done : progress.packages_done;
      var total = progress.bytes_total || progress.packages_total;
      if (total) {
        bar.max = total;
        bar.value = Math.min(done, total);
        $("progress-count").textContent = progress.bytes_total
          ? formatBytes(done) + " / " + formatBytes(total)
          : done + " / " + total + " packages";
      } else {
        bar.removeAttribute("value");
        $("progress-count").textContent = "";
      }
    });
    source.addEventListener("end", function () {
      finished = true;
      source.close();
      state.textContent = "finished";
      root.dataset.stream = "ended";
    });
    source.addEventListener("failure", function (event) {
      var failure = JSON.parse(event.data);
      if (failure.retry) {  // the stream ends; the browser reconnects after the last line
        state.textContent = "reconnecting…";
        root.dataset.reconnects = String(Number(root.dataset.reconnects || 0) + 1);
        return;
      }
      source.close();
      state.textContent = failure.message;
      root.dataset.stream = "failed";
    });
    source.addEventListener("error", function () {
      if (!finished && source.readyState !== EventSource.CLOSED) state.textContent = "reconnecting…";
    });
  });
})();
