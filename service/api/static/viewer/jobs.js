// The tenant's jobs: state, delivery, progress, submitted time and links; refreshed while any
// job runs or waits for its delivery to a PACS.
"use strict";

(() => {
  const POLL_MS = 3000;
  const $ = (id) => document.getElementById(id);
  let pages = [null]; // cursors of the pages shown: null is the newest page
  let timer = null;

  function showMessage(text, kind = "info") {
    $("message").textContent = text;
    $("message").dataset.kind = kind;
    $("message").hidden = !text;
  }

  function listUrl(cursorUrl) {
    if (cursorUrl) return cursorUrl;
    const query = new URLSearchParams({ limit: "50" });
    const state = $("state-filter").value;
    const externalId = $("external-id-filter").value.trim();
    if (state) query.set("state", state);
    if (externalId) query.set("external_id", externalId);
    return `/v1/jobs?${query}`;
  }

  const LAYER_NAMES = { stain: "stained", gareau: "Gareau", fcm: "FCM", rcm: "RCM" };

  function progressLabel(job) {
    if (job.state === "queued" || job.state === "running") return Dscm.progressText(job);
    if (job.state !== "succeeded") return "";
    const qc = Dscm.qcFlag(job);
    return qc ? `100 %, ${qc.text}` : "100 %";
  }

  function row(job) {
    const e = Dscm.element;
    const names = [job.inputs.rcm.filename, job.inputs.fcm.filename].filter(Boolean).join(" + ");
    const title = Dscm.caseTitle(job);
    const progress = e("progress", { max: "100", value: String(Dscm.percent(job)) });
    const label = job.purged_at ? "deleted" : job.state;
    const links = e("td", { class: "links" });
    if (job.layers.length) {
      links.append(e("a", { href: job.links.viewer, text: "View" }));
      const share = e("button", { type: "button", text: "Share link" });
      share.addEventListener("click", async () => {
        try {
          await Dscm.shareLink(job.id);
          showMessage(`Viewer link for ${title || names || job.id} copied.`);
        } catch (error) {
          showMessage(`No link: ${error.message}`, "error");
        }
      });
      links.append(share);
    } else if (job.state === "queued" || job.state === "running") {
      links.append(e("a", { href: job.links.viewer, text: "Watch" }));
    }
    const size = `${job.inputs.width_px} × ${job.inputs.height_px} px`;
    const error = job.error ? e("div", { class: "error", text: job.error.code }) : "";
    return e("tr", { dataset: { jobId: job.id, state: job.state } }, [
      e("td", { text: Dscm.localTime(job.created_at), title: job.created_at }),
      caseCell(job, title, names),
      e("td", {}, [
        e("span", { class: "badge", text: label, dataset: { state: label } }),
        error,
        ...deliveryCell(job),
      ]),
      e("td", {}, [progress, e("span", { class: "progress-text", text: progressLabel(job) })]),
      e("td", { text: size }),
      e("td", { text: job.layers.map((layer) => LAYER_NAMES[layer]).join(", ") }),
      links,
    ]);
  }

  /** The job's delivery to a PACS, if it has one: a badge, and the last error in words. */
  function deliveryCell(job) {
    const e = Dscm.element;
    const delivery = Dscm.deliveryStatus(job);
    if (!delivery) return [];
    const badge = e("div", {}, [
      e("span", {
        class: "badge delivery",
        text: delivery.text,
        title: delivery.title,
        dataset: { state: delivery.state },
      }),
    ]);
    if (!delivery.error) return [badge];
    return [badge, e("div", { class: "delivery-error", text: delivery.error, title: delivery.title })];
  }

  /** The case's label (or accession number), the accession number, then the file names. */
  function caseCell(job, title, names) {
    const e = Dscm.element;
    const cell = e("td", { class: "case", title: `job ${job.id}` });
    if (title) cell.append(e("div", { class: "case-label", text: title }));
    if (job.label && job.external_id) {
      cell.append(e("div", { class: "case-id", text: job.external_id }));
    }
    cell.append(e("div", { class: title ? "files" : "", text: names || job.id.slice(0, 8) }));
    return cell;
  }

  async function load() {
    clearTimeout(timer);
    let list;
    try {
      list = await Dscm.api(listUrl(pages[pages.length - 1]));
    } catch (error) {
      if (error.status === 401 || error.status === 403) {
        Dscm.forget(null);
        await Dscm.askForKey(`${error.message}. Enter an API key with the read role.`);
        return load();
      }
      showMessage(error.message, "error");
      if (error.status !== 422) timer = setTimeout(load, POLL_MS * 2);
      return;
    }
    $("forget-key").hidden = false;
    const body = $("jobs").querySelector("tbody");
    body.replaceChildren(...list.items.map(row));
    $("jobs").hidden = false;
    const filtered = $("external-id-filter").value.trim();
    const none = filtered ? "No job with this accession number." : "No jobs yet: submit one with POST /v1/jobs.";
    showMessage(list.items.length ? "" : none);
    $("older").hidden = !list.next;
    $("older").dataset.next = list.next || "";
    document.body.dataset.state = "ready";
    const active = list.items.some(
      (job) =>
        job.state === "queued" ||
        job.state === "running" ||
        (job.delivery && job.delivery.state === "pending"),
    );
    if (active) timer = setTimeout(load, POLL_MS);
  }

  async function start() {
    $("forget-key").addEventListener("click", () => {
      Dscm.forget(null);
      location.reload();
    });
    $("state-filter").addEventListener("change", () => {
      pages = [null];
      load();
    });
    $("case-filter").addEventListener("submit", (event) => {
      event.preventDefault();
      pages = [null];
      load();
    });
    $("external-id-filter").addEventListener("input", (event) => {
      if (event.target.value) return; // cleared: every job again
      pages = [null];
      load();
    });
    $("older").addEventListener("click", () => {
      pages.push($("older").dataset.next);
      load();
    });
    if (!Dscm.apiKey()) await Dscm.askForKey("Enter an API key with the read role.");
    load();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
