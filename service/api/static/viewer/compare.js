// Two layers of one slide at once: side by side (two synchronised viewers) or swipe (the second
// viewer laid over the first and clipped at a divider that the mouse drags or the keys move).
// Both viewers always have containers of the same size, so equal zoom and centre mean the same
// part of the slide at the same scale.
"use strict";

const DscmCompare = (() => {
  const MODES = ["side", "swipe"];

  /**
   * Keep two viewers' zoom and centre equal, whichever one the user moves. A viewer that was
   * just moved to match the other raises its own viewport-change a frame later: that echo is
   * recognised (its view is the one pushed into it) and not sent back, so an animation in one
   * viewer is mirrored frame by frame and never fought. After a viewer resizes (a layout
   * change), it takes the other's view instead of imposing its own.
   */
  function synchronise(leader, follower) {
    const pushed = new Map();
    const resized = new Set();
    function view(viewer) {
      return { zoom: viewer.viewport.getZoom(true), center: viewer.viewport.getCenter(true) };
    }
    function same(a, b) {
      return !!b && Math.abs(a.zoom - b.zoom) < 1e-9 && a.center.distanceTo(b.center) < 1e-9;
    }
    function copy(from, to) {
      const wanted = view(from);
      pushed.set(to, wanted);
      to.viewport.zoomTo(wanted.zoom, null, true);
      to.viewport.panTo(wanted.center, true);
    }
    const handlers = [];
    for (const [self, other] of [
      [leader, follower],
      [follower, leader],
    ]) {
      const onChange = () => {
        if (resized.delete(self)) copy(other, self);
        else if (!same(view(self), pushed.get(self))) copy(self, other);
      };
      const onResize = () => resized.add(self);
      self.addHandler("viewport-change", onChange);
      self.addHandler("resize", onResize);
      handlers.push([self, "viewport-change", onChange], [self, "resize", onResize]);
    }
    copy(leader, follower);
    return () => handlers.forEach(([viewer, name, handler]) => viewer.removeHandler(name, handler));
  }

  /**
   * The comparison of `primary` (an open OpenSeadragon viewer) with a second layer.
   * options: element (the second viewer's container), divider (a role=slider element),
   * captions ({a, b}), labelOf(layer), open(element, layer) -> Promise<viewer> (a new viewer
   * of that layer), onChange() (after every change, for the page's controls).
   */
  function create(primary, options) {
    const state = {
      layer: null,
      mode: "side",
      swipePercent: 50,
      viewer: null,
      openedLayer: null,
      primaryLayer: null,
    };
    let unlink = null;
    let opening = 0;

    function layout() {
      const on = state.layer !== null;
      document.body.dataset.compare = on ? state.mode : "off";
      document.body.style.setProperty("--swipe", `${state.swipePercent}%`);
      options.element.hidden = !on;
      options.divider.hidden = !(on && state.mode === "swipe");
      options.divider.setAttribute("aria-valuenow", String(Math.round(state.swipePercent)));
      options.captions.a.hidden = !on;
      options.captions.b.hidden = !on;
      if (on) {
        options.captions.a.textContent = options.labelOf(state.primaryLayer);
        options.captions.b.textContent = options.labelOf(state.layer);
      }
      options.onChange();
    }

    /** Show `layer` beside (or under the divider of) the primary viewer's `primaryLayer`. */
    async function show(layer, primaryLayer) {
      state.primaryLayer = primaryLayer;
      if (layer === state.layer && state.viewer) {
        layout();
        return;
      }
      const ticket = ++opening;
      close();
      state.layer = layer;
      layout();
      const viewer = await options.open(options.element, layer);
      if (ticket !== opening) {
        viewer.destroy();
        return;
      }
      state.viewer = viewer;
      viewer.addHandler("open", () => {
        state.openedLayer = layer;
        unlink = synchronise(primary, viewer);
      });
    }

    function close() {
      if (unlink) unlink();
      unlink = null;
      if (state.viewer) state.viewer.destroy();
      state.viewer = null;
      state.openedLayer = null;
    }

    function stop() {
      opening += 1;
      close();
      state.layer = null;
      layout();
    }

    function setMode(mode) {
      if (!MODES.includes(mode)) return;
      state.mode = mode;
      layout();
    }

    function setSwipe(percent) {
      state.swipePercent = Math.min(100, Math.max(0, percent));
      layout();
    }

    function relabel(primaryLayer) {
      state.primaryLayer = primaryLayer;
      if (state.layer !== null) layout();
    }

    /** Drag the divider with the mouse (or a finger); arrow keys move it while it has focus. */
    function attachDivider() {
      const divider = options.divider;
      const area = divider.parentElement;
      function follow(event) {
        const box = area.getBoundingClientRect();
        setSwipe(((event.clientX - box.left) / box.width) * 100);
      }
      divider.addEventListener("pointerdown", (event) => {
        divider.setPointerCapture(event.pointerId);
        divider.focus();
        follow(event);
        event.preventDefault();
      });
      divider.addEventListener("pointermove", (event) => {
        if (divider.hasPointerCapture(event.pointerId)) follow(event);
      });
      divider.addEventListener("keydown", (event) => {
        const steps = { ArrowLeft: -2, ArrowRight: 2, PageDown: -10, PageUp: 10 };
        if (event.key in steps) setSwipe(state.swipePercent + steps[event.key]);
        else if (event.key === "Home") setSwipe(0);
        else if (event.key === "End") setSwipe(100);
        else return;
        event.preventDefault();
        event.stopPropagation();
      });
    }

    attachDivider();
    layout();
    return { state, show, stop, setMode, setSwipe, relabel };
  }

  return { create, synchronise, MODES };
})();
