/*
 * uploadmeter.js -- drives the progress component rendered by uploadmeter/macros.html.
 *
 * No dependencies.  Every name and message from the server or the file system is written
 * with textContent (never innerHTML), so a file called "<img src=x onerror=alert(1)>.png"
 * is shown as text.
 *
 * On "Upload": a fresh tracking id, the widget's form submitted as multipart/form-data into
 * the widget's hidden iframe with uploadmeter_id=<id> on the action URL (the form's own
 * enctype/method/target/action are restored at once), then polling of
 * {endpoint}/progress?id=<id> until the upload is done, failed or cancelled.
 *
 * Several widgets in one form: each Upload button sends the form's other fields and its
 * own widget's files only (the other widgets' file inputs are left out of that request).
 *
 * window.UploadMeter.init(root) sets up widgets added to the page later.
 */
(function () {
  "use strict";

  if (window.UploadMeter) {
    window.UploadMeter.init(document);
    return;
  }

  var widgets = new WeakMap();
  var submitForm = HTMLFormElement.prototype.submit; // a field named "submit" may shadow it
  var MAX_POLL_FAILURES = 8;
  var UNKNOWN_AFTER_RESPONSE = 3;
  var CANCEL_GRACE_MS = 1500;

  // -- small helpers ----------------------------------------------------------------------

  function newId() {
    var c = window.crypto;
    if (c && typeof c.randomUUID === "function") return c.randomUUID();
    var bytes = new Uint8Array(16);
    if (c && typeof c.getRandomValues === "function") {
      c.getRandomValues(bytes);
    } else {
      for (var i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    }
    return Array.prototype.map
      .call(bytes, function (b) { return (b + 256).toString(16).slice(1); })
      .join("");
  }

  var formatBytes = window.UploadMeterFormat.bytes; // uploadmeter-format.js

  function formatDuration(seconds) {
    var s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function number(value, fallback) {
    var n = parseInt(value, 10);
    return isFinite(n) && n >= 0 ? n : fallback;
  }

  function setText(el, text) {
    if (el) el.textContent = text == null ? "" : String(text);
  }

  function safeHref(value) {
    // Only same-site paths and http(s) URLs: never "javascript:" from app data.
    try {
      var url = new URL(String(value), document.baseURI);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function withUploadId(action, id) {
    var url = new URL(action, document.baseURI);
    if (/(^|[?&])uploadmeter_id=/.test(url.search)) {
      url.searchParams.set("uploadmeter_id", id);
    } else {
      // Append rather than re-serialise, so the app's own query stays byte for byte.
      url.search = (url.search ? url.search + "&" : "?") + "uploadmeter_id=" + encodeURIComponent(id);
    }
    return url.href;
  }

  // -- one widget -------------------------------------------------------------------------

  function Widget(root) {
    var id = root.getAttribute("data-uploadmeter");
    var part = function (suffix) { return document.getElementById(id + suffix); };
    this.root = root;
    this.id = id;
    this.input = part("");
    this.button = part("_upload");
    this.frame = part("_frame");
    this.stages = {
      stage1: part("_stage1"),
      stage2: part("_stage2"),
      stage3: part("_stage3"),
      error: part("_error"),
    };
    this.hint = part("_hint");
    this.bar = part("_progressBar");
    this.cells = Array.prototype.slice.call(this.bar.children);
    this.label = part("_progressBarlabel");
    this.names = part("_fileNames");
    this.bytes = part("_bytes");
    this.speed = part("_speed");
    this.eta = part("_eta");
    this.fieldList = part("_fields");
    this.status = part("_status");
    this.cancelButton = part("_cancel");
    this.summary = part("_summary");
    this.errorTitle = part("_errorTitle");
    this.errorMessage = part("_errorMessage");

    this.endpoint = (root.getAttribute("data-endpoint") || "/uploadmeter").replace(/\/+$/, "");
    this.firstPoll = number(root.getAttribute("data-first-poll"), 500);
    this.interval = Math.max(50, number(root.getAttribute("data-poll-interval"), 400));
    this.maxLength = number(root.getAttribute("data-max-content-length"), 0);
    this.activeClasses = ["active"].concat(
      (root.getAttribute("data-active-class") || "").split(/\s+/).filter(Boolean)
    );

    this.run = 0; // bumped by every start/reset/cancel: late replies of older runs are ignored
    this.busy = false;
    this.shown = 0; // active cells
    this.timer = null;

    var self = this;
    this.button.addEventListener("click", function (event) { self.start(event); });
    this.input.addEventListener("change", function () { self.describeSelection(); });
    this.cancelButton.addEventListener("click", function () { self.cancel(); });
    this.frame.addEventListener("load", function () { self.frameLoaded(); });
    root.addEventListener("click", function (event) {
      var target = event.target;
      if (target && target.closest && target.closest("[data-uploadmeter-reset]")) {
        event.preventDefault();
        self.reset();
      }
    });
  }

  Widget.prototype.show = function (name, state) {
    for (var key in this.stages) {
      if (this.stages[key]) this.stages[key].hidden = key !== name;
    }
    this.root.setAttribute("data-state", state);
  };

  Widget.prototype.describeSelection = function () {
    var files = this.input.files ? Array.prototype.slice.call(this.input.files) : [];
    this.hint.classList.remove("uploadmeter-warning");
    if (!files.length) {
      setText(this.hint, "");
      return;
    }
    var total = files.reduce(function (sum, f) { return sum + f.size; }, 0);
    var text = files.length === 1
      ? files[0].name + " \u2014 " + formatBytes(total)
      : files.length + " files \u2014 " + formatBytes(total);
    if (this.maxLength && total > this.maxLength) {
      text += " (over the " + formatBytes(this.maxLength) + " limit)";
      this.hint.classList.add("uploadmeter-warning");
    }
    setText(this.hint, text);
  };

  Widget.prototype.url = function (what) {
    return this.endpoint + "/" + what + "?id=" + encodeURIComponent(this.uploadId);
  };

  // -- stage 1 -> 2: submit into the iframe -------------------------------------------------

  Widget.prototype.start = async function (event) {
    event.preventDefault();
    if (this.busy) return;
    var form = this.input.form;
    if (!form) {
      this.showError("Upload failed", "This upload widget is not inside a <form>.", 0);
      return;
    }
    if (!this.input.files || !this.input.files.length) {
      setText(this.hint, this.input.multiple ? "Choose files first." : "Choose a file first.");
      this.hint.classList.add("uploadmeter-warning");
      this.input.focus();
      return;
    }
    if (typeof form.reportValidity === "function" && !form.reportValidity()) return;

    var run = ++this.run;
    this.busy = true;
    this.uploadId = newId();
    this.files = Array.prototype.map.call(this.input.files, function (f) {
      return { name: f.name, size: f.size };
    });
    this.total = this.files.reduce(function (sum, f) { return sum + f.size; }, 0);
    this.submitted = false;
    this.responded = false;
    this.unknownAfterResponse = 0;
    this.failures = 0;
    this.renderStart();

    // The upload's record is keyed to uploadmeter's session cookie.  One cheap request
    // first makes sure this browser has it, even when the page came from a cache.
    try {
      await fetch(this.url("progress"), {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
    } catch (e) {
      /* the poll loop reports lasting trouble */
    }
    if (run !== this.run) return; // cancelled meanwhile

    this.submit(form);
    this.schedule(run, this.firstPoll);
  };

  Widget.prototype.submit = function (form) {
    var saved = [];
    var set = function (el, name, value) {
      saved.push([el, name, el.getAttribute(name)]);
      el.setAttribute(name, value);
    };
    // getAttribute, not form.action: a field named "action" would shadow the property.
    var action = this.button.getAttribute("formaction") || form.getAttribute("action") || location.href;
    set(form, "action", withUploadId(action, this.uploadId));
    set(form, "method", "post");
    set(form, "enctype", "multipart/form-data");
    set(form, "target", this.frame.name);
    var others = [];
    var self = this;
    Array.prototype.forEach.call(form.elements, function (el) {
      if (el !== self.input && el.type === "file" && !el.disabled && el.closest("[data-uploadmeter]")) {
        el.disabled = true;
        others.push(el);
      }
    });
    try {
      this.submitted = true;
      submitForm.call(form); // the request is built here, synchronously
    } finally {
      others.forEach(function (el) { el.disabled = false; });
      saved.reverse().forEach(function (entry) {
        if (entry[2] === null) entry[0].removeAttribute(entry[1]);
        else entry[0].setAttribute(entry[1], entry[2]);
      });
    }
  };

  Widget.prototype.frameLoaded = function () {
    if (!this.busy || !this.submitted) return;
    // The app has answered: the record's final state is written before the response, so
    // one poll now tells how it ended.
    this.responded = true;
    this.schedule(this.run, 0);
  };

  // -- stage 2: polling -------------------------------------------------------------------

  Widget.prototype.schedule = function (run, delay) {
    var self = this;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () { self.poll(run); }, delay);
  };

  Widget.prototype.poll = async function (run) {
    if (run !== this.run || !this.busy) return;
    var data;
    try {
      var response = await fetch(this.url("progress"), {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      data = await response.json();
    } catch (e) {
      if (run !== this.run) return;
      this.failures++;
      if (this.failures >= MAX_POLL_FAILURES) {
        this.showError("Upload status unknown", "Lost contact with the server while uploading.", 0);
        return;
      }
      setText(this.status, "Reconnecting\u2026");
      this.schedule(run, Math.min(this.interval * Math.pow(2, this.failures), 5000));
      return;
    }
    if (run !== this.run) return;
    this.failures = 0;
    this.render(data, run);
  };

  Widget.prototype.render = function (data, run) {
    switch (data.state) {
      case "done":
        this.renderDone(data);
        return;
      case "cancelled":
        this.renderCancelled();
        return;
      case "error":
        this.renderError(data.error);
        return;
      case "unknown":
        // Not seen by the server yet.  Once the app has answered it never will be.
        if (this.responded && ++this.unknownAfterResponse >= UNKNOWN_AFTER_RESPONSE) {
          this.showError(
            "Upload failed",
            "The server answered but did not report on this upload.",
            0
          );
          return;
        }
        setText(this.status, "Waiting for the server\u2026");
        this.schedule(run, Math.min(200, this.interval)); // a quick retry (docs/lineage.rst)
        return;
      default: // starting, uploading, processing
        this.renderProgress(data);
        this.schedule(run, this.interval);
    }
  };

  Widget.prototype.renderStart = function () {
    this.setPercent(0);
    var names = this.files.map(function (f) { return f.name; });
    setText(this.names, names.length === 1 ? names[0] : names.length + " files: " + names.join(", "));
    setText(this.bytes, "0 B of " + formatBytes(this.total));
    setText(this.speed, "");
    setText(this.eta, "");
    setText(this.status, "Starting\u2026");
    this.cancelButton.disabled = false;
    this.buildFieldRows();
    this.show("stage2", "uploading");
  };

  Widget.prototype.buildFieldRows = function () {
    var list = this.fieldList;
    while (list.firstChild) list.removeChild(list.firstChild);
    this.rows = [];
    if (this.files.length < 2) {
      list.hidden = true;
      return;
    }
    for (var i = 0; i < this.files.length; i++) {
      var li = document.createElement("li");
      li.className = "uploadmeter-field";
      var name = document.createElement("span");
      name.className = "uploadmeter-field-name";
      name.textContent = this.files[i].name;
      var track = document.createElement("span");
      track.className = "uploadmeter-field-track";
      var fill = document.createElement("span");
      fill.className = "uploadmeter-field-fill";
      track.appendChild(fill);
      var info = document.createElement("span");
      info.className = "uploadmeter-field-info";
      info.textContent = "waiting";
      li.appendChild(name);
      li.appendChild(track);
      li.appendChild(info);
      list.appendChild(li);
      this.rows.push({ li: li, fill: fill, info: info, name: name });
    }
    list.hidden = false;
  };

  Widget.prototype.setPercent = function (pct) {
    var n = Math.max(0, Math.min(100, Math.floor(pct)));
    var cells = this.cells;
    var active = this.activeClasses;
    var from = Math.min(n, this.shown);
    var to = Math.max(n, this.shown);
    for (var i = from; i < to && i < cells.length; i++) {
      var on = i < n;
      for (var j = 0; j < active.length; j++) cells[i].classList.toggle(active[j], on);
      cells[i].classList.toggle("passive", !on);
    }
    this.shown = n;
    setText(this.label, n + "%");
    this.bar.setAttribute("aria-valuenow", String(n));
  };

  Widget.prototype.renderProgress = function (data) {
    var received = data.bytes_received || 0;
    var total = data.content_length;
    this.root.setAttribute("data-state", data.state === "processing" ? "processing" : "uploading");
    if (data.state === "processing") {
      // The upload is in; the app's work after it reports on the same bar (in green).
      var p = data.processing || {};
      var done = typeof p.percentage === "number" ? p.percentage : null;
      var phase = "Processing: " + (p.phase ? String(p.phase) : "working");
      this.setPercent(done === null ? 100 : done);
      this.bar.classList.toggle("uploadmeter-indeterminate", done === null);
      this.bar.setAttribute("aria-valuetext", phase + (done === null ? "" : ", " + done + "%"));
      setText(this.bytes, "Uploaded " + formatBytes(total || received));
      setText(this.speed, "");
      setText(this.eta, "");
      setText(this.status, phase + (done === null ? "" : " \u2014 " + done + "%"));
      this.renderFields(data.fields || []);
      return;
    }
    var pct = typeof data.percentage === "number" ? data.percentage : null;
    if (pct !== null) this.setPercent(pct);
    this.bar.classList.toggle("uploadmeter-indeterminate", pct === null);
    var amount = formatBytes(received) + (total ? " of " + formatBytes(total) : "");
    setText(this.bytes, amount);
    this.bar.setAttribute("aria-valuetext", (pct === null ? "" : pct + "%, ") + amount);
    var speed = data.speed || data.average_speed;
    setText(this.speed, speed ? formatBytes(speed) + "/s" : "");
    setText(this.eta, typeof data.eta === "number" ? formatDuration(data.eta) + " left" : "");
    setText(this.status, data.state === "starting" ? "Starting\u2026" : "Uploading\u2026");
    this.renderFields(data.fields || []);
  };

  Widget.prototype.renderFields = function (fields) {
    if (!this.rows || !this.rows.length) return;
    // The browser sends the chosen files in order, under the input's name.
    var name = this.input.name;
    var mine = fields.filter(function (f) { return f.name === name && f.filename !== null; });
    for (var i = 0; i < this.rows.length; i++) {
      var row = this.rows[i];
      var field = mine[i];
      var size = this.files[i].size;
      if (!field) continue;
      if (field.filename) row.name.textContent = field.filename;
      var got = field.bytes_received || 0;
      var pct = field.state === "done" ? 100 : size ? Math.min(100, Math.floor((got * 100) / size)) : 0;
      row.fill.style.width = pct + "%";
      row.li.setAttribute("data-state", field.state);
      row.info.textContent =
        field.state === "done" ? formatBytes(size) + " \u2713" : formatBytes(got) + " of " + formatBytes(size);
    }
  };

  // -- endings ----------------------------------------------------------------------------

  Widget.prototype.finish = function () {
    this.busy = false;
    this.run++;
    clearTimeout(this.timer);
  };

  Widget.prototype.renderDone = function (data) {
    this.finish();
    this.setPercent(100);
    var fields = (data.fields || []).filter(function (f) { return f.filename; });
    var names = fields.length
      ? fields.map(function (f) { return f.filename; })
      : this.files.map(function (f) { return f.name; });
    var what = names.length === 1 ? names[0] : names.length + " files";
    var text = "Uploaded " + what + " (" + formatBytes(this.total) + ")";
    // The upload's own time ends where processing began (if the app processed it).
    var uploadEnd = (data.processing && data.processing.started_at) || data.finished_at;
    if (uploadEnd && data.started_at) {
      text += " in " + formatDuration(Math.max(0, uploadEnd - data.started_at));
    }
    setText(this.summary, text + ".");
    this.fillResult(data.result || {});
    this.show("stage3", "done");
  };

  Widget.prototype.fillResult = function (result) {
    // <span data-uploadmeter-result="filename"> shows result.filename;
    // <a data-uploadmeter-result-href="url"> links to result.url (http(s) and paths only).
    var scope = this.stages.stage3;
    Array.prototype.forEach.call(scope.querySelectorAll("[data-uploadmeter-result]"), function (el) {
      var value = result[el.getAttribute("data-uploadmeter-result")];
      if (Array.isArray(value)) value = value.join(", ");
      setText(el, value);
    });
    Array.prototype.forEach.call(scope.querySelectorAll("[data-uploadmeter-result-href]"), function (el) {
      var href = safeHref(result[el.getAttribute("data-uploadmeter-result-href")]);
      if (href) el.setAttribute("href", href);
    });
  };

  Widget.prototype.renderError = function (error) {
    var status = error && error.status;
    var message = (error && error.message) || "The upload failed.";
    var title = "Upload failed";
    if (status === 413) {
      title = "File too large";
      if (this.maxLength) message += " The limit is " + formatBytes(this.maxLength) + ".";
    } else if (status === 499) {
      this.renderCancelled();
      return;
    }
    this.showError(title, message, status || 0);
  };

  Widget.prototype.renderCancelled = function () {
    this.showError("Upload cancelled", "The upload was cancelled; nothing was saved.", 499, "cancelled");
  };

  Widget.prototype.showError = function (title, message, status, state) {
    this.finish();
    setText(this.errorTitle, title);
    setText(this.errorMessage, message);
    this.stages.error.setAttribute("data-status", String(status || ""));
    this.show("error", state || "error");
  };

  Widget.prototype.cancel = async function () {
    if (!this.busy) return;
    var run = this.run;
    this.cancelButton.disabled = true;
    setText(this.status, "Cancelling\u2026");
    var status = 0;
    var data = null;
    try {
      var response = await fetch(this.url("cancel"), {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      status = response.status;
      data = await response.json();
    } catch (e) {
      /* stop the browser's side below anyway */
    }
    if (run !== this.run) return; // finished while we asked
    if (status === 409 && data && data.state !== "cancelled") {
      if (data.state === "done" || data.state === "error") {
        this.render(data, run); // it had already ended: show how
      } else {
        // Too late: the server has the whole body; the running polls show how it ends.
        setText(this.status, (data.error && data.error.message) || "Too late to cancel.");
      }
      return;
    }
    var grace = this.submitted && status === 200 ? CANCEL_GRACE_MS : 0;
    var requestOver = this.responded; // e.g. cancelled while processing
    this.renderCancelled();
    if (!requestOver) this.stopFrame(grace);
  };

  Widget.prototype.stopFrame = function (grace) {
    // The server stops reading at its next progress write and answers; if it has not
    // within the grace period (or never saw the upload), abort the browser's request.
    var frame = this.frame;
    var self = this;
    var run = this.run;
    var abort = function () {
      // Not if a new upload started meanwhile: it has replaced the old request already.
      if (self.run === run) frame.setAttribute("src", "about:blank");
    };
    if (!grace) {
      abort();
      return;
    }
    var onload = function () {
      clearTimeout(timer);
      frame.removeEventListener("load", onload);
    };
    var timer = setTimeout(function () {
      frame.removeEventListener("load", onload);
      abort();
    }, grace);
    frame.addEventListener("load", onload);
  };

  Widget.prototype.reset = function () {
    this.finish();
    this.submitted = false;
    this.input.value = "";
    setText(this.hint, "");
    this.hint.classList.remove("uploadmeter-warning");
    this.bar.classList.remove("uploadmeter-indeterminate");
    this.bar.removeAttribute("aria-valuetext");
    this.shown = 100;
    this.setPercent(0);
    this.show("stage1", "idle");
    this.input.focus();
  };

  // -- setup ------------------------------------------------------------------------------

  function init(scope) {
    var roots = (scope || document).querySelectorAll("[data-uploadmeter]");
    Array.prototype.forEach.call(roots, function (root) {
      if (!widgets.has(root)) widgets.set(root, new Widget(root));
    });
  }

  window.UploadMeter = {
    init: init,
    widget: function (root) { return widgets.get(root) || null; },
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { init(document); });
  } else {
    init(document);
  }
})();
