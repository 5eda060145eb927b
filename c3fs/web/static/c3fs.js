// c3fs serve: the one script. Marks each image once the page has loaded: data-natural-width
// says its decoded width (0: it could not be shown) and class "broken" outlines the ones
// that failed; <body data-images="loaded/total"> sums it up (the browser test reads it).
"use strict";
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img");
  var loaded = 0;
  images.forEach(function (img) {
    img.dataset.naturalWidth = String(img.naturalWidth);
    if (img.complete && img.naturalWidth > 0) { loaded += 1; }
    else if (img.complete) { img.classList.add("broken"); }
  });
  document.body.dataset.images = loaded + "/" + images.length;
});
