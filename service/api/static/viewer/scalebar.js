// A scale bar for OpenSeadragon in micrometres, from the slide's microns per pixel.
// The bar keeps a round length (1, 2 or 5 x 10^n um) no wider than maxWidthPx on screen.
"use strict";

const DscmScaleBar = (() => {
  /** The round length (um) and its on-screen width (px) for umPerScreenPx. */
  function choose(umPerScreenPx, maxWidthPx) {
    const target = umPerScreenPx * maxWidthPx;
    const power = 10 ** Math.floor(Math.log10(target));
    let length = power;
    for (const step of [5, 2, 1]) {
      if (step * power <= target) {
        length = step * power;
        break;
      }
    }
    return { lengthUm: length, widthPx: length / umPerScreenPx };
  }

  function label(lengthUm) {
    if (lengthUm >= 1000) return `${+(lengthUm / 1000).toPrecision(3)} mm`;
    if (lengthUm >= 1) return `${+lengthUm.toPrecision(3)} µm`;
    return `${+(lengthUm * 1000).toPrecision(3)} nm`;
  }

  /** Keep `element` (a .scalebar with .scalebar-bar and .scalebar-label) in step with viewer. */
  function attach(viewer, element, mppUm, maxWidthPx = 160) {
    const bar = element.querySelector(".scalebar-bar");
    const text = element.querySelector(".scalebar-label");
    function update() {
      const item = viewer.world.getItemAt(0);
      if (!item || !(mppUm > 0)) {
        element.hidden = true;
        return;
      }
      const screenPxPerImagePx = item.viewportToImageZoom(viewer.viewport.getZoom(true));
      const chosen = choose(mppUm / screenPxPerImagePx, maxWidthPx);
      bar.style.width = `${Math.round(chosen.widthPx)}px`;
      text.textContent = label(chosen.lengthUm);
      element.dataset.lengthUm = String(chosen.lengthUm);
      element.hidden = false;
    }
    viewer.addHandler("update-viewport", update);
    viewer.addHandler("open", update);
    viewer.addHandler("resize", update);
    return update;
  }

  return { attach, choose, label };
})();
