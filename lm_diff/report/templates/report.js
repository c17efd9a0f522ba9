(function () {
  var q = document.getElementById("lb-search"), cat = document.getElementById("lb-category"),
      set = document.getElementById("lb-set"), dmin = document.getElementById("lb-dmin"),
      numax = document.getElementById("lb-numax"), count = document.getElementById("lb-count");
  if (!q) { return; }
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.latent"));
  function num(el, dflt) { var v = parseFloat(el.value); return isNaN(v) ? dflt : v; }
  function apply() {
    var text = q.value.trim().toLowerCase(), c = cat.value, s = set.value, lo = num(dmin, 0), nu = num(numax, Infinity), shown = 0;
    cards.forEach(function (a) {
      var spec = parseFloat(a.getAttribute("data-specificity")), ne = parseFloat(a.getAttribute("data-nu-eps"));
      var ok = (!c || (" " + a.getAttribute("data-categories") + " ").indexOf(" " + c + " ") >= 0) &&
               (!s || a.getAttribute("data-set") === s) && (isNaN(spec) || spec >= lo) && (isNaN(ne) || ne <= nu) &&
               (!text || a.getAttribute("data-search").indexOf(text) >= 0);
      a.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + cards.length + " latents";
  }
  [q, cat, set, dmin, numax].forEach(function (el) { el.addEventListener("input", apply); });
  apply();
})();
