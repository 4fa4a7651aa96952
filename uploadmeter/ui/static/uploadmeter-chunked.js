/*
 * uploadmeter-chunked.js -- drives the resumable uploader rendered by
 * uploadmeter/chunked.html, on top of simple-uploader.js (window.Uploader, served by the
 * page).
 *
 * Each chosen file gets an identifier: its SHA-256 (Web Crypto, files up to the
 * widget's data-hash-limit) or "file-<size>-<lastModified>-<name>".  Choosing the same file
 * again after a reload gives the same identifier, so the server's answer to the first
 * test request lists the chunks it already has and only the others are sent
 * (checkChunkUploadedByResponse).  A file identified by its SHA-256 is first offered to
 * {target}/merge (a POST, no chunk): a file the server already has completes there and is
 * not sent at all; otherwise (404) the uploader sends it.
 *
 * Chunks are sent as raw bodies (simple-uploader's method "octet", parameters in the
 * query string).  The bars show what the server has stored, then its processing (merge),
 * polled from {endpoint}/progress?id=<identifier>.  Names and messages are written with
 * textContent only.
 *
 * window.UploadMeterChunked.init(root) sets up widgets added to the page later.
 */
(function () {
  "use strict";

  if (window.UploadMeterChunked) {
    window.UploadMeterChunked.init(document);
    return;
  }

  var widgets = new WeakMap();

  var formatBytes = window.UploadMeterFormat.bytes; // uploadmeter-format.js

  function formatSeconds(s) {
    if (typeof s !== "number" || !isFinite(s)) return "";
    s = Math.round(s);
    if (s < 60) return s + " s left";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s left";
    return Math.floor(m / 60) + " h " + (m % 60) + " min left";
  }

  function toHex(buffer) {
    return Array.prototype.map
      .call(new Uint8Array(buffer), function (b) { return (b + 256).toString(16).slice(1); })
      .join("");
  }

  function identifierFor(file, hashLimit) {
    var subtle = window.crypto && window.crypto.subtle;
    if (subtle && file.size <= hashLimit && typeof file.arrayBuffer === "function") {
      return file.arrayBuffer().then(function (buffer) {
        return subtle.digest("SHA-256", buffer);
      }).then(toHex);
    }
    // Also a valid progress id ([A-Za-z0-9_-], 8 to 128 characters: the "file-" prefix
    // keeps it long enough when lastModified is 0 and the name has no such character).
    var name = (file.name || "").replace(/[^A-Za-z0-9_-]/g, "").slice(0, 80);
    return Promise.resolve("file-" + file.size + "-" + (file.lastModified || 0) + "-" + name);
  }

  function errorMessage(text, fallback) {
    try {
      var data = JSON.parse(text);
      if (data && data.error && data.error.message) return String(data.error.message);
    } catch (e) { /* not JSON */ }
    return fallback;
  }

  // -- one file ---------------------------------------------------------------------------

  function Item(widget, file) {
    this.widget = widget;
    this.file = file;
    this.identifier = null;
    this.upload = null; // simple-uploader's File
    this.state = "hashing";
    this.timer = null;
    this.failures = 0;
    var el = widget.template.content.firstElementChild.cloneNode(true);
    this.el = el;
    this.cells = el.querySelectorAll(".uploadmeter-cell");
    this.label = el.querySelector(".uploadmeter-label");
    this.bar = el.querySelector(".uploadmeter-bar");
    this.bytes = el.querySelector(".uploadmeter-bytes");
    this.speed = el.querySelector(".uploadmeter-speed");
    this.eta = el.querySelector(".uploadmeter-eta");
    this.status = el.querySelector(".uploadmeter-status");
    this.buttons = {
      pause: el.querySelector(".uploadmeter-pause"),
      resume: el.querySelector(".uploadmeter-resume"),
      cancel: el.querySelector(".uploadmeter-cancel"),
      remove: el.querySelector(".uploadmeter-remove")
    };
    el.querySelector(".uploadmeter-names").textContent = file.name;
    var self = this;
    this.buttons.pause.addEventListener("click", function () { self.pause(); });
    this.buttons.resume.addEventListener("click", function () { self.resume(); });
    this.buttons.cancel.addEventListener("click", function () { self.cancel(); });
    this.buttons.remove.addEventListener("click", function () { self.remove(); });
    this.setState("hashing", "Preparing\u2026");
    widget.list.appendChild(el);
  }

  Item.prototype.setState = function (state, status) {
    this.state = state;
    this.el.setAttribute("data-state", state);
    if (status !== undefined) this.status.textContent = status;
    var active = state === "uploading" || state === "processing" || state === "hashing";
    this.buttons.pause.hidden = state !== "uploading";
    this.buttons.resume.hidden = state !== "paused";
    this.buttons.cancel.hidden = !(active || state === "paused");
    this.buttons.remove.hidden = active || state === "paused";
  };

  Item.prototype.setPercent = function (pct) {
    pct = Math.max(0, Math.min(100, Math.floor(pct)));
    var activeClass = this.widget.activeClass;
    for (var i = 0; i < this.cells.length; i++) {
      var on = i < pct;
      this.cells[i].classList.toggle("active", on);
      this.cells[i].classList.toggle("passive", !on);
      if (activeClass) this.cells[i].classList.toggle(activeClass, on);
    }
    this.label.textContent = pct + "%";
    this.bar.setAttribute("aria-valuenow", String(pct));
  };

  Item.prototype.start = function () {
    this.setState("uploading", "Uploading\u2026");
    this.schedule(0);
    this.widget.uploader.upload();
  };

  Item.prototype.schedule = function (delay) {
    var self = this;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () { self.poll(); }, delay);
  };

  Item.prototype.poll = function () {
    var self = this;
    if (this.state !== "uploading" && this.state !== "processing") return;
    var url = this.widget.endpoint + "/progress?id=" + encodeURIComponent(this.identifier);
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (record) {
        self.failures = 0;
        self.render(record);
      })
      .catch(function () {
        self.failures++;
      })
      .then(function () {
        if (self.state === "uploading" || self.state === "processing") {
          self.schedule(self.widget.pollInterval * Math.min(8, 1 + self.failures));
        }
      });
  };

  Item.prototype.render = function (record) {
    if (this.state !== "uploading" && this.state !== "processing") return;
    var state = record.state;
    if (state === "unknown" || state === "starting") return;
    if (state === "uploading") {
      this.setPercent(record.percentage || 0);
      this.bytes.textContent =
        formatBytes(record.bytes_received) + " of " + formatBytes(record.content_length);
      this.speed.textContent = record.average_speed ? formatBytes(record.average_speed) + "/s" : "";
      this.eta.textContent = formatSeconds(record.eta);
      return;
    }
    this.speed.textContent = "";
    this.eta.textContent = "";
    if (state === "processing") {
      var p = record.processing || {};
      this.setState("processing", (p.phase ? p.phase.charAt(0).toUpperCase() + p.phase.slice(1) : "Processing") + "\u2026");
      this.setPercent(typeof p.percentage === "number" ? p.percentage : 100);
      return;
    }
    clearTimeout(this.timer);
    if (state === "done") {
      this.setPercent(100);
      this.bytes.textContent = formatBytes(record.content_length || (record.result || {}).size);
      var result = record.result || {};
      this.setState("done", result.instant ? "Done (already on the server)" : "Done");
      var link = typeof result.url === "string" && /^(\/(?!\/)|https?:)/.test(result.url);
      if (link) {
        var a = document.createElement("a");
        a.href = result.url;
        a.className = "uploadmeter-chunked-link";
        a.textContent = "Open";
        this.status.appendChild(document.createTextNode(" \u2013 "));
        this.status.appendChild(a);
      }
    } else if (state === "cancelled") {
      this.stopUploader();
      this.setState("cancelled", "Cancelled");
    } else {
      this.stopUploader();
      this.setState("error", (record.error && record.error.message) || "The upload failed.");
    }
  };

  Item.prototype.stopUploader = function () {
    if (this.upload && !this.upload.isComplete()) this.upload.pause();
  };

  Item.prototype.fail = function (message) {
    clearTimeout(this.timer);
    this.setState("error", message);
  };

  Item.prototype.pause = function () {
    if (!this.upload || this.state !== "uploading") return;
    this.upload.pause();
    clearTimeout(this.timer);
    this.setState("paused", "Paused");
  };

  Item.prototype.resume = function () {
    if (!this.upload || this.state !== "paused") return;
    this.setState("uploading", "Uploading\u2026");
    this.upload.resume();
    this.schedule(0);
  };

  Item.prototype.cancel = function () {
    clearTimeout(this.timer);
    if (this.upload) this.upload.cancel();
    if (this.identifier) {
      fetch(this.widget.target + "?identifier=" + encodeURIComponent(this.identifier), {
        method: "DELETE",
        credentials: "same-origin",
        headers: { Accept: "application/json" }
      }).catch(function () { /* the chunks expire on the server anyway */ });
    }
    this.setState("cancelled", "Cancelled");
  };

  Item.prototype.remove = function () {
    clearTimeout(this.timer);
    if (this.identifier && this.widget.items[this.identifier] === this) {
      delete this.widget.items[this.identifier];
    }
    if (this.upload && this.widget.uploader.files.indexOf(this.upload) >= 0) {
      this.widget.uploader.removeFile(this.upload);
    }
    if (this.el.parentNode) this.el.parentNode.removeChild(this.el);
  };

  // -- the widget ---------------------------------------------------------------------------

  function Widget(root) {
    var d = root.dataset;
    this.root = root;
    this.endpoint = d.endpoint;
    this.target = d.target;
    this.pollInterval = parseInt(d.pollInterval, 10) || 400;
    this.hashLimit = parseInt(d.hashLimit, 10) || 0;
    this.activeClass = d.activeClass || "";
    this.input = root.querySelector(".uploadmeter-input");
    this.hint = root.querySelector(".uploadmeter-hint");
    this.list = root.querySelector(".uploadmeter-chunked-files");
    this.template = root.querySelector("template");
    this.items = {};
    this.pending = new WeakMap(); // File -> identifier, read by generateUniqueIdentifier
    var self = this;
    if (typeof window.Uploader !== "function") {
      this.hint.textContent = "The uploader script (simple-uploader.js) is not loaded.";
      this.input.disabled = true;
      return;
    }
    this.uploader = new window.Uploader({
      target: this.target,
      chunkSize: parseInt(d.chunkSize, 10) || 1048576,
      simultaneousUploads: parseInt(d.simultaneousUploads, 10) || 3,
      method: "octet",
      testChunks: true,
      maxChunkRetries: 3,
      chunkRetryInterval: 1000,
      generateUniqueIdentifier: function (file) { return self.pending.get(file); },
      checkChunkUploadedByResponse: function (chunk, message) {
        var data;
        try { data = JSON.parse(message); } catch (e) { return false; }
        if (data.skipUpload) return true;
        return (data.uploaded || []).indexOf(chunk.offset + 1) >= 0;
      }
    });
    this.uploader.on("fileSuccess", function (rootFile, file) {
      var item = self.items[file.uniqueIdentifier];
      if (item && item.state === "uploading") item.schedule(0); // the merge result comes by poll
    });
    this.uploader.on("fileError", function (rootFile, file, message) {
      var item = self.items[file.uniqueIdentifier];
      if (item) item.fail(errorMessage(message, "The server refused the upload."));
    });
    this.input.addEventListener("change", function () {
      var files = Array.prototype.slice.call(self.input.files || []);
      self.input.value = "";
      files.forEach(function (file) { self.add(file); });
    });
  }

  // Chunks are keyed to uploadmeter's session cookie: one cheap request makes sure this
  // browser has it before the first chunk (the page may come from a cache).
  Widget.prototype.session = function () {
    if (!this.sessionReady) {
      this.sessionReady = fetch(this.endpoint + "/session", {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      }).catch(function () { /* the first chunk reports lasting trouble */ });
    }
    return this.sessionReady;
  };

  // Instant upload: ask the server to complete a file it already has (known by its
  // SHA-256) without sending a chunk.  Resolves true when it did.
  Widget.prototype.instant = function (file, identifier) {
    if (!/^[0-9a-f]{64}$/.test(identifier)) return Promise.resolve(false);
    var chunkSize = this.uploader.opts.chunkSize;
    var params = new URLSearchParams({
      identifier: identifier,
      filename: file.name,
      relativePath: file.webkitRelativePath || file.name,
      totalSize: String(file.size),
      chunkSize: String(chunkSize),
      totalChunks: String(Math.max(Math.floor(file.size / chunkSize), 1))
    });
    return fetch(this.target + "/merge?" + params.toString(), {
      method: "POST",
      credentials: "same-origin",
      headers: { Accept: "application/json" }
    }).then(function (r) {
      return r.ok ? r.json().then(function (data) { return !!data.complete; }) : false;
    }).catch(function () { return false; });
  };

  Widget.prototype.add = function (file) {
    var self = this;
    var item = new Item(this, file);
    Promise.all([identifierFor(file, this.hashLimit), this.session()]).then(
      function (results) {
        var identifier = results[0];
        var existing = self.items[identifier];
        if (existing && existing.state !== "done" && existing.state !== "error" && existing.state !== "cancelled") {
          item.remove();
          self.hint.textContent = file.name + " is already in the list.";
          return;
        }
        if (existing) existing.remove();
        item.identifier = identifier;
        self.items[identifier] = item;
        return self.instant(file, identifier).then(function (done) {
          if (done) {
            item.setState("uploading", "Uploading\u2026");
            item.schedule(0); // the record says done (result.instant)
          } else {
            self.send(item, file);
          }
        });
      },
      function () { item.fail("The file could not be read."); }
    );
  };

  Widget.prototype.send = function (item, file) {
    var identifier = item.identifier;
    this.pending.set(file, identifier);
    this.uploader.addFile(file);
    item.upload = this.uploader.getFromUniqueIdentifier(identifier) || null;
    if (!item.upload) {
      item.fail("The file could not be added.");
      return;
    }
    item.start();
  };

  function init(scope) {
    var roots = (scope || document).querySelectorAll("[data-uploadmeter-chunked]");
    for (var i = 0; i < roots.length; i++) {
      if (!widgets.has(roots[i])) widgets.set(roots[i], new Widget(roots[i]));
    }
  }

  window.UploadMeterChunked = {
    init: init,
    widget: function (root) { return widgets.get(root); }
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { init(document); });
  } else {
    init(document);
  }
})();
