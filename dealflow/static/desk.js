// The deal desk's few behaviours that htmx does not give declaratively.
// Self-hosted, no inline script: the pages' CSP allows scripts from 'self' only.
(function () {
  "use strict";

  // An upload's progress: a form with data-progress="ID" fills <progress id="ID">
  // as htmx reports the bytes sent.
  document.addEventListener("htmx:xhr:progress", function (event) {
    var form = event.target;
    if (!form || !form.getAttribute) {
      return;
    }
    var barId = form.getAttribute("data-progress");
    var bar = barId ? document.getElementById(barId) : null;
    if (!bar || !event.detail || !event.detail.lengthComputable) {
      return;
    }
    bar.hidden = false;
    bar.max = event.detail.total;
    bar.value = event.detail.loaded;
  });

  // A refused post (403, 409, 413, 415, 422) or a service that is down (503)
  // answers with the page saying why: show it, as a plain form post would.
  var SAID = [403, 409, 413, 415, 422, 503];
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    var verb = event.detail.requestConfig && event.detail.requestConfig.verb;
    if (xhr && verb === "post" && SAID.indexOf(xhr.status) >= 0) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
})();
