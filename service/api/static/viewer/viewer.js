// The viewer of one job: its state and progress while it runs, then its Deep Zoom layers.
// While the job runs the slide is already shown (issue 20): the stained tiles, the rest greyed,
// filling in as the worker stains; when it succeeds the published pyramid replaces it in place.
// window.dscmViewer exposes the state (and whenDrawn()) for the browser test and for debugging.
"use strict";

(() => {
  const POLL_MS = 2000;
  const LIVE_POLL_MS = 500; // while the slide fills in
  const LAYER_LABELS = {
    stain: ["Stained", "The H&E-like digital stain"],
    gareau: ["Gareau", "Gareau's linear stain of FCM + RCM, without networks"],
    fcm: ["FCM", "Raw fluorescence (nuclei bright)"],
    rcm: ["RCM", "Raw reflectance"],
  };
  const jobId = location.pathname.split("/").filter(Boolean).pop();
  const $ = (id) => document.getElementById(id);
  const state = {
    jobId,
    job: null,
    viewer: null,
    layer: null,
    openedLayer: null,
    tilesLoaded: 0,
    maxLevel: -1,
    errors: [],
    compare: null,
    source: null, // "live" while the job runs, "published" once its pyramid is shown
    live: null, // the last /live answer: the grid and which grid tiles are stained
    liveLog: [], // [ms since the page opened, stained grid tiles] at each change, for timing
    swapping: false,
    liveDirty: false,
    whenDrawn,
  };
  window.dscmViewer = state;
  const liveDzi = {};

  function setPageState(value) {
    document.body.dataset.state = value;
  }

  function showMessage(text, kind = "info") {
    const box = $("message");
    box.textContent = text;
    box.dataset.kind = kind;
    box.hidden = !text;
  }

  function renderJob(job) {
    const names = [job.inputs.rcm.filename, job.inputs.fcm.filename].filter(Boolean);
    const files = names.length ? names.join(" + ") : `job ${job.id.slice(0, 8)}`;
    $("job-title").textContent = Dscm.caseTitle(job) || files;
    $("job-external-id").textContent = job.label && job.external_id ? job.external_id : "";
    $("job-external-id").hidden = !(job.label && job.external_id);
    $("job-title").title = `${files}; job ${job.id}, submitted ${Dscm.localTime(job.created_at)}`;
    const badge = $("job-state");
    badge.textContent = job.purged_at ? "deleted" : job.state;
    badge.dataset.state = job.purged_at ? "purged" : job.state;
    const qc = Dscm.qcFlag(job);
    $("job-qc").textContent = qc ? qc.text : "";
    $("job-qc").title = qc ? qc.title : "";
    $("job-qc").hidden = !qc;
    const delivery = Dscm.deliveryStatus(job);
    $("job-delivery").textContent = delivery ? delivery.text : "";
    $("job-delivery").title = delivery ? delivery.title : "";
    $("job-delivery").dataset.state = delivery ? delivery.state : "";
    $("job-delivery").hidden = !delivery;
    const active = job.state === "queued" || job.state === "running";
    $("progress-wrap").hidden = !active;
    $("progress").value = Dscm.percent(job);
    $("progress-text").textContent = Dscm.progressText(job);
    $("share").hidden = !Dscm.apiKey();
    $("forget-key").hidden = !Dscm.apiKey();
  }

  function renderLayers(job) {
    const nav = $("layers");
    nav.replaceChildren();
    job.layers.forEach((layer, index) => {
      const [label, title] = LAYER_LABELS[layer];
      const button = Dscm.element("button", {
        type: "button",
        title: `${title} (key ${index + 1})`,
        "aria-pressed": String(layer === state.layer),
        dataset: { layer },
        text: label,
      });
      button.addEventListener("click", () => showLayer(layer));
      nav.append(button);
    });
    nav.hidden = job.layers.length < 2;
    renderCompare(job);
  }

  /** The comparison controls: which second layer (or none) and the layout. */
  function renderCompare(job) {
    const compare = state.compare;
    const select = $("compare-layer");
    const current = compare ? compare.state.layer : null;
    const choices = job.layers.filter((layer) => layer !== state.layer);
    select.replaceChildren(
      Dscm.element("option", { value: "", text: "off" }),
      ...choices.map((layer) => Dscm.element("option", { value: layer, text: LAYER_LABELS[layer][0] })),
    );
    select.value = current || "";
    const mode = compare ? compare.state.mode : "side";
    for (const name of DscmCompare.MODES) {
      $(`layout-${name}`).setAttribute("aria-pressed", String(mode === name));
    }
    $("layout").hidden = current === null;
    $("compare").hidden = job.layers.length < 2;
  }

  /**
   * The view the address asks for (a viewer link carries it): ?layer= the main layer,
   * ?compare=side|swipe a comparison, ?with= its second layer. In the query, not the
   * fragment, so it stays when the page takes a link's token out of the fragment.
   */
  function requestedView() {
    const query = new URLSearchParams(location.search);
    return { layer: query.get("layer"), compare: query.get("compare"), with: query.get("with") };
  }

  /** Open the comparison the address asks for, once the main view exists. */
  function openRequestedComparison(job, view) {
    if (!DscmCompare.MODES.includes(view.compare)) return;
    state.compare.setMode(view.compare);
    const asked = view.with !== state.layer && job.layers.includes(view.with);
    const partner = asked ? view.with : defaultPartner(job);
    if (partner) compareWith(partner);
  }

  /** The layer compared with the shown one by default: FCM (what the stain must be faithful
   * to), else Gareau, else whatever else the job kept. */
  function defaultPartner(job) {
    const others = job.layers.filter((layer) => layer !== state.layer);
    return ["fcm", "gareau", "stain", "rcm"].find((layer) => others.includes(layer)) || null;
  }

  function compareWith(layer, primaryLayer = state.layer) {
    const compare = state.compare;
    if (!compare) return;
    if (!layer) {
      compare.stop();
      return;
    }
    compare.show(layer, primaryLayer).catch((error) => {
      showMessage(`Could not open the ${layer} layer: ${error.message}`, "error");
      compare.stop();
    });
  }

  function toggleCompare() {
    if (!state.compare) return;
    if (state.compare.state.layer) state.compare.stop();
    else compareWith(defaultPartner(state.job));
  }

  /**
   * The Deep Zoom tile source of a layer, from its DZI (fetched with this tab's credentials).
   * Built here rather than from the DZI's URL because the layer travels as a query parameter
   * (?layer=), which OpenSeadragon only carries over to the tile URLs for *.dzi addresses.
   */
  async function tileSource(layer, live = null) {
    const query = `?layer=${encodeURIComponent(layer)}`;
    // A running job's DZI is its final one: fetched once, not at every update of its tiles.
    let text = live ? liveDzi[layer] : undefined;
    if (text === undefined) {
      const response = await fetch(`/v1/jobs/${jobId}/dzi${query}`, {
        headers: { Authorization: Dscm.authorization(jobId) },
        credentials: "omit",
      });
      if (!response.ok) throw new Dscm.ApiProblem(response.status, null);
      text = await response.text();
      if (live) liveDzi[layer] = text;
    }
    const xml = new DOMParser().parseFromString(text, "application/xml");
    const image = xml.documentElement;
    const size = image.getElementsByTagName("Size")[0];
    const source = new OpenSeadragon.DziTileSource({
      width: Number(size.getAttribute("Width")),
      height: Number(size.getAttribute("Height")),
      tileSize: Number(image.getAttribute("TileSize")),
      tileOverlap: Number(image.getAttribute("Overlap")),
      tilesUrl: `/v1/jobs/${jobId}/dzi_files/`,
      fileFormat: image.getAttribute("Format"),
      queryParams: query,
    });
    if (live) versionTiles(source, live);
    return source;
  }

  /**
   * A running job's tile URLs carry a version: the attempt and how many grid tiles under the
   * tile (with a margin) are stained. A tile whose grid tiles did not change keeps its URL, so
   * OpenSeadragon's cache (and the browser's, for finished tiles) serves it without a request;
   * a tile with newly stained parts gets a new URL and is fetched again.
   */
  function versionTiles(source, live) {
    const base = source.getTileUrl.bind(source);
    source.getTileUrl = (level, x, y) => `${base(level, x, y)}&v=${tileVersion(source, live, level, x, y)}`;
  }

  function tileVersion(source, live, level, x, y) {
    if (!live.planned) return `${live.attempt}.q`;
    const marginPx = 32; // covers the server's rounding and its 1/8 copy
    const workPerPx = (live.work_width_px / live.width_px) / source.getLevelScale(level);
    const edge = source.getTileWidth(level);
    const overlap = source.tileOverlap;
    const box = (i, work) => [
      Math.max(0, Math.floor(((i * edge - overlap) * workPerPx - marginPx) / live.tile_px)),
      Math.min(Math.ceil(work / live.tile_px) - 1, Math.floor((((i + 1) * edge + overlap) * workPerPx + marginPx) / live.tile_px)),
    ];
    const [column0, column1] = box(x, live.work_width_px);
    const [row0, row1] = box(y, live.work_height_px);
    let count = 0;
    for (let row = row0; row <= row1; row += 1) {
      const start = row * live.columns;
      for (let column = column0; column <= column1; column += 1) {
        if (live.done.charCodeAt(start + column) === 49) count += 1;
      }
    }
    return `${live.attempt}.${count}`;
  }

  async function fetchLive(layer) {
    return Dscm.api(`/v1/jobs/${jobId}/live?layer=${encodeURIComponent(layer)}`, { jobId });
  }

  /**
   * Put the image `makeSource()` makes in place of the shown one without a flash: the new one
   * is added on top at the same place and the old one removed once the new one has drawn the
   * view. `state.swapping` is true from the call until then.
   */
  async function replaceImage(makeSource, then = () => {}) {
    const viewer = state.viewer;
    state.swapping = true;
    let source;
    try {
      source = await makeSource();
    } catch (error) {
      state.swapping = false;
      throw error;
    }
    const old = viewer.world.getItemAt(viewer.world.getItemCount() - 1);
    viewer.addTiledImage({
      tileSource: source,
      success: (event) => {
        const item = event.item;
        let finished = false;
        const finish = () => {
          if (finished) return;
          finished = true;
          if (old) viewer.world.removeItem(old);
          state.swapping = false;
          then();
        };
        item.addHandler("fully-loaded-change", (change) => {
          if (change.fullyLoaded) {
            setPageState("ready");
            finish();
          }
        });
        if (item.getFullyLoaded()) finish();
        setTimeout(finish, 20000); // the user moved away meanwhile: do not keep both for ever
      },
      error: () => {
        state.swapping = false;
      },
    });
  }

  /** While the job runs: fetch which tiles are stained, and show the new ones. */
  async function updateLive(job) {
    if (!state.viewer || state.source !== "live") return;
    if (state.swapping) {
      state.liveDirty = true; // look again as soon as the image being put in place is drawn
      return;
    }
    state.liveDirty = false;
    let live;
    try {
      live = await fetchLive(state.layer);
    } catch (_) {
      return; // finished meanwhile, or a blip: the next poll decides
    }
    const before = state.live;
    if (before && before.attempt === live.attempt && before.tiles_done === live.tiles_done && before.planned === live.planned) return;
    state.live = live;
    state.liveLog.push([Math.round(performance.now()), live.tiles_done]);
    const again = () => {
      if (state.liveDirty && state.job) updateLive(state.job);
    };
    await replaceImage(() => tileSource(state.layer, live), again).catch(() => {});
  }

  /** The job succeeded while its live view was shown: the published pyramid takes its place. */
  async function showPublished(job) {
    if (state.swapping) {
      setTimeout(() => showPublished(job), 200);
      return;
    }
    state.source = "published";
    state.layer = job.layers.includes(state.layer) ? state.layer : job.layers[0];
    renderLayers(job);
    await replaceImage(() => tileSource(state.layer), () => renderLayers(job));
  }

  /** An OpenSeadragon viewer of one layer in `element`, sending this tab's credentials. */
  function createViewer(element, source, extra = {}) {
    const viewer = OpenSeadragon({
      element,
      tileSources: source,
      loadTilesWithAjax: true,
      ajaxHeaders: { Authorization: Dscm.authorization(jobId) },
      drawer: "canvas",
      showNavigationControl: false,
      showNavigator: false,
      maxZoomPixelRatio: 2,
      visibilityRatio: 0.5,
      timeout: 60000,
      gestureSettingsMouse: { clickToZoom: false },
      ...extra,
    });
    viewer.addHandler("tile-load-failed", (event) => {
      state.errors.push(event.message);
    });
    return viewer;
  }

  async function openViewer(job) {
    $("viewer").hidden = false;
    $("zoom").hidden = false;
    const view = requestedView();
    const running = job.state === "queued" || job.state === "running";
    let source;
    if (running) {
      state.layer = "stain";
      state.source = "live";
      state.live = await fetchLive(state.layer);
      source = await tileSource(state.layer, state.live);
    } else {
      state.layer = job.layers.includes(view.layer) ? view.layer : job.layers[0];
      state.source = "published";
      source = await tileSource(state.layer);
    }
    $("navigator").hidden = false; // OpenSeadragon sizes the minimap from its element
    const viewer = createViewer($("viewer"), source, { showNavigator: true, navigatorId: "navigator" });
    state.viewer = viewer;
    viewer.addHandler("open", () => {
      state.openedLayer = state.layer;
      document.body.dataset.layer = state.layer;
      setPageState("loading");
      const item = viewer.world.getItemAt(0);
      item.addHandler("fully-loaded-change", (event) => {
        if (event.fullyLoaded) setPageState("ready");
      });
    });
    viewer.addHandler("open-failed", (event) => {
      showMessage(`Could not open the ${state.layer} layer: ${event.message}`, "error");
      setPageState("error");
    });
    viewer.addHandler("tile-loaded", (event) => {
      state.tilesLoaded += 1;
      state.maxLevel = Math.max(state.maxLevel, event.tile.level);
    });
    viewer.addHandler("animation-start", () => setPageState("loading"));
    viewer.addHandler("animation-finish", () => {
      if (viewer.world.getItemCount() && viewer.world.getItemAt(0).getFullyLoaded()) {
        setPageState("ready");
      }
    });
    DscmScaleBar.attach(viewer, $("scalebar"), job.inputs.mpp_um);
    $("zoom-in").addEventListener("click", () => zoom(1.5));
    $("zoom-out").addEventListener("click", () => zoom(1 / 1.5));
    $("home").addEventListener("click", () => viewer.viewport.goHome());
    state.compare = DscmCompare.create(viewer, {
      element: $("viewer-b"),
      divider: $("divider"),
      captions: { a: $("caption-a"), b: $("caption-b") },
      labelOf: (layer) => LAYER_LABELS[layer][0],
      open: async (element, layer) => {
        const second = createViewer(element, await tileSource(layer));
        second.addHandler("tile-loaded", () => {
          state.tilesLoaded += 1;
        });
        return second;
      },
      onChange: () => renderCompare(state.job),
    });
    $("compare-layer").addEventListener("change", (event) => compareWith(event.target.value));
    for (const mode of DscmCompare.MODES) {
      $(`layout-${mode}`).addEventListener("click", () => state.compare.setMode(mode));
    }
    document.addEventListener("keydown", onKey);
    renderLayers(job);
    if (!running) openRequestedComparison(job, view);
  }

  /**
   * Keys: 1-4 show a layer; Shift+1-4 compare with it; C compares on/off; X switches between
   * side by side and swipe; [ and ] move the swipe divider. Not while typing in a field.
   */
  function onKey(event) {
    const job = state.job;
    if (state.source !== "published") return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest && event.target.closest("input, select, textarea")) return;
    const digit = /^(?:Digit|Numpad)([1-9])$/.exec(event.code);
    const index = digit ? Number(digit[1]) - 1 : -1;
    const compare = state.compare;
    if (index >= 0 && index < job.layers.length) {
      if (event.shiftKey) compareWith(job.layers[index] === state.layer ? "" : job.layers[index]);
      else showLayer(job.layers[index]);
    } else if (event.key === "c" || event.key === "C") {
      toggleCompare();
    } else if ((event.key === "x" || event.key === "X") && compare.state.layer) {
      compare.setMode(compare.state.mode === "side" ? "swipe" : "side");
    } else if ((event.key === "[" || event.key === "]") && compare.state.layer) {
      compare.setMode("swipe");
      compare.setSwipe(compare.state.swipePercent + (event.key === "]" ? 5 : -5));
    } else {
      return;
    }
    event.preventDefault();
  }

  function zoom(factor) {
    state.viewer.viewport.zoomBy(factor);
    state.viewer.viewport.applyConstraints();
  }

  /** Switch layer, keeping the part of the slide in view (every layer has the same size). */
  async function showLayer(layer) {
    if (!state.viewer || layer === state.layer) return;
    const bounds = state.viewer.viewport.getBounds();
    const compare = state.compare;
    if (compare && compare.state.layer === layer) compareWith(state.layer, layer); // swap
    else if (compare) compare.relabel(layer);
    state.layer = layer;
    state.openedLayer = null;
    renderLayers(state.job);
    let source;
    try {
      source = await tileSource(layer);
    } catch (error) {
      showMessage(`Could not open the ${layer} layer: ${error.message}`, "error");
      return;
    }
    if (state.layer !== layer) return; // another layer was chosen meanwhile
    state.viewer.addOnceHandler("open", () => state.viewer.viewport.fitBounds(bounds, true));
    state.viewer.open(source);
  }

  /** Resolves once the current view's tiles are all drawn and nothing moves. */
  function whenDrawn(timeoutMs = 30000) {
    const started = performance.now();
    return new Promise((resolve, reject) => {
      let calm = 0;
      function still(viewer) {
        const item = viewer && viewer.world.getItemAt(0);
        return !!item && item.getFullyLoaded() && !viewer.isAnimating();
      }
      function check() {
        const compare = state.compare ? state.compare.state : { layer: null };
        const drawn =
          state.openedLayer === state.layer &&
          still(state.viewer) &&
          (compare.layer === null ||
            (compare.openedLayer === compare.layer && still(compare.viewer)));
        calm = drawn ? calm + 1 : 0;
        if (calm >= 3) resolve(true);
        else if (performance.now() - started > timeoutMs) reject(new Error("tiles not drawn"));
        else setTimeout(check, 100);
      }
      check();
    });
  }

  async function refresh() {
    let job;
    try {
      job = await Dscm.api(`/v1/jobs/${jobId}`, { jobId });
    } catch (error) {
      if (error.status === 401 || error.status === 403) {
        Dscm.forget(jobId);
        await Dscm.askForKey(`${error.message}. Enter an API key with the read role.`);
        return refresh();
      }
      showMessage(error.status === 404 ? "No such job for this key." : error.message, "error");
      setPageState("error");
      if (!error.status || error.status >= 500) setTimeout(refresh, POLL_MS * 2);
      return;
    }
    state.job = job;
    renderJob(job);
    if (job.state === "queued" || job.state === "running") {
      if (!state.viewer) setPageState(job.state);
      // with the slide in view, the header's state and progress say it (no box over the slide)
      if (state.viewer) showMessage("");
      else showMessage(job.state === "queued" ? "Waiting for a worker…" : "Staining…");
      if (!state.viewer) {
        openViewer(job).catch((error) => {
          state.viewer = null; // the running view is a bonus: the published one still comes
          showMessage(`Staining… (no preview: ${error.message})`);
        });
      } else {
        await updateLive(job);
      }
      setTimeout(refresh, job.state === "running" ? LIVE_POLL_MS : POLL_MS);
    } else if (job.purged_at) {
      setPageState("purged");
      showMessage("This job's files were deleted.", "error");
    } else if (job.state === "succeeded") {
      showMessage("");
      if (state.viewer && state.source === "live") {
        showPublished(job).catch((error) => {
          showMessage(`Could not open the slide: ${error.message}`, "error");
          setPageState("error");
        });
      } else if (!state.viewer) {
        openViewer(job).catch((error) => {
          showMessage(`Could not open the slide: ${error.message}`, "error");
          setPageState("error");
        });
      }
      // the slide is final, its delivery to the PACS may still change: keep the header current
      if (job.delivery && job.delivery.state === "pending") setTimeout(refresh, POLL_MS);
    } else {
      if (state.viewer) {
        state.viewer.destroy(); // a failed or cancelled job's tiles are no longer served
        state.viewer = null;
        $("viewer").hidden = true;
        $("navigator").hidden = true;
        $("zoom").hidden = true;
      }
      setPageState(job.state);
      const why = job.error ? `${job.error.code}: ${job.error.detail}` : job.state;
      showMessage(`The job ${job.state} (${why}).`, "error");
    }
  }

  async function start() {
    Dscm.takeLinkToken(jobId);
    $("forget-key").addEventListener("click", () => {
      Dscm.forget(jobId);
      location.reload();
    });
    $("share").addEventListener("click", async () => {
      try {
        const url = await Dscm.shareLink(jobId);
        showMessage(`Viewer link copied (valid for a limited time): ${url}`);
      } catch (error) {
        showMessage(`No link: ${error.message}`, "error");
      }
    });
    if (!Dscm.authorization(jobId)) await Dscm.askForKey("Enter an API key with the read role.");
    refresh();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
