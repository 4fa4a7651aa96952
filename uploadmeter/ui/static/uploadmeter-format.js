/* uploadmeter-format.js: how byte counts read in uploadmeter's widgets, in one place.
 *
 * Loaded (before them) by the form component (uploadmeter.js) and the resumable uploader
 * (uploadmeter-chunked.js).  Decimal units with three significant digits: "999 B",
 * "3.15 MB", "21.0 MB", "512 MB".  The demo's `filesize` filter (demo_app/views.py) is
 * its Python twin.
 */
(function () {
  "use strict";

  if (window.UploadMeterFormat) return;

  function formatBytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "";
    if (n < 1000) return n + " B";
    var units = ["kB", "MB", "GB", "TB"];
    var value = n;
    var unit = -1;
    do {
      value /= 1000;
      unit++;
    } while (value >= 1000 && unit < units.length - 1);
    return value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0) + " " + units[unit];
  }

  window.UploadMeterFormat = { bytes: formatBytes };
})();
