// Shared by the dscm pages: credentials in sessionStorage, API calls, the key form, formatting.
// Credentials never go into a URL: an API key is typed once per tab; a signed viewer link
// carries its token in the fragment (#token=...), which browsers never send to a server.
"use strict";

const Dscm = (() => {
  const KEY_ITEM = "dscm.apiKey";
  const linkItem = (jobId) => `dscm.link.${jobId}`;

  class ApiProblem extends Error {
    constructor(status, body) {
      const detail = body && (body.detail || body.title);
      super(detail || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.code;
    }
  }

  /** Move a viewer link's token from the fragment into this tab's storage. */
  function takeLinkToken(jobId) {
    const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (match) {
      sessionStorage.setItem(linkItem(jobId), decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function apiKey() {
    return sessionStorage.getItem(KEY_ITEM);
  }

  /** The Authorization header value for a job (or for the job list when jobId is null). */
  function authorization(jobId) {
    const credential = apiKey() || (jobId ? sessionStorage.getItem(linkItem(jobId)) : null);
    return credential ? `Bearer ${credential}` : null;
  }

  function forget(jobId) {
    sessionStorage.removeItem(KEY_ITEM);
    if (jobId) sessionStorage.removeItem(linkItem(jobId));
  }

  async function api(path, { jobId = null, method = "GET", body = undefined } = {}) {
    const headers = { Accept: "application/json" };
    const auth = authorization(jobId);
    if (auth) headers.Authorization = auth;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) throw new ApiProblem(response.status, data);
    return data;
  }

  /** Show the key form; resolves once the user entered a key (stored for this tab only). */
  function askForKey(message) {
    const form = document.getElementById("key-form");
    const input = document.getElementById("key-input");
    const note = document.getElementById("key-message");
    note.textContent = message || "";
    form.hidden = false;
    input.focus();
    return new Promise((resolve) => {
      form.addEventListener(
        "submit",
        (event) => {
          event.preventDefault();
          sessionStorage.setItem(KEY_ITEM, input.value.trim());
          input.value = "";
          form.hidden = true;
          resolve();
        },
        { once: true },
      );
    });
  }

  function percent(job) {
    return job.state === "succeeded" ? 100 : job.progress.percent;
  }

  function progressText(job) {
    // job.message is already in words ("staining 12 of 150 tiles"); the percent is of the whole job
    const message = job.message || (job.state === "queued" ? "waiting for a worker" : "");
    return job.progress.total ? `${message} (${Math.round(percent(job))} %)` : message;
  }

  /** The case a job belongs to, in words: its label, else its accession number ("" if none). */
  function caseTitle(job) {
    return job.label || job.external_id || "";
  }

  // The per-slide checks, one badge: the faithfulness check (report.qc) flags a stain whose
  // nuclei do not follow FCM as closely as Gareau's linear stain does; the input check
  // (report.inputs_check) a pair whose FCM and RCM may be swapped (docs/models.md).
  function qcFlag(job) {
    const qc = (job.report && job.report.qc) || {};
    const inputs = (job.report && job.report.inputs_check) || {};
    const flags = [];
    if (qc.flag) {
      flags.push({
        text: qc.flag,
        title:
          `Nuclei in this stain follow FCM at r = ${qc.nuc_r} against ${qc.nuc_r_gareau} for ` +
          `Gareau's linear stain (ratio ${qc.ratio}, threshold ${qc.threshold}): compare with ` +
          "the FCM layer before reading nuclei.",
      });
    }
    if (inputs.flag) {
      flags.push({
        text: inputs.flag,
        title:
          `The input check reads this pair as ${inputs.outcome} (evidence ${inputs.evidence}` +
          ` that FCM is fluorescence and RCM reflectance; doubtful at ` +
          `${inputs.thresholds.doubtful}): compare the FCM and RCM layers before reading it.`,
      });
    }
    if (!flags.length) return null;
    return {
      text: flags.map((f) => f.text).join("; "),
      title: flags.map((f) => f.title).join("\n"),
    };
  }

  // The job's delivery to a PACS (job.delivery; DICOM jobs only), in the API's words: the
  // badge says where and in which state, its tooltip the attempts and the last error.
  function deliveryStatus(job) {
    const d = job.delivery;
    if (!d) return null;
    const tries = `${d.attempts} attempt${d.attempts === 1 ? "" : "s"}`;
    const failedTries = d.state === "pending" && d.attempts ? ` (${tries} failed)` : "";
    let title = `Delivery to the PACS ${d.destination}: ${d.state}, ${tries}`;
    if (d.state === "delivered") {
      const count = d.instances === null ? "" : `${d.instances} instances, `;
      title = `Delivered to the PACS ${d.destination}: ${count}${localTime(d.delivered_at)} (${tries})`;
    } else if (d.last_error) {
      title += `; last error: ${d.last_error}`;
      if (d.next_attempt_at) title += `; next attempt ${localTime(d.next_attempt_at)}`;
    }
    return {
      state: d.state,
      text: `PACS ${d.destination}: ${d.state}${failedTries}`,
      title,
      error: d.state === "delivered" ? "" : d.last_error || "",
    };
  }

  function localTime(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  function element(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "text") node.textContent = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  /** Ask the API for a signed link to a job's viewer and put it on the clipboard. */
  async function shareLink(jobId) {
    const link = await api(`/v1/jobs/${jobId}/viewer-link`, { method: "POST", body: {} });
    const url = new URL(link.url, location.origin).href;
    try {
      await navigator.clipboard.writeText(url);
    } catch (_) {
      window.prompt("Viewer link (copy it):", url);
      return url;
    }
    return url;
  }

  return {
    ApiProblem,
    takeLinkToken,
    apiKey,
    authorization,
    forget,
    api,
    askForKey,
    percent,
    progressText,
    qcFlag,
    deliveryStatus,
    caseTitle,
    localTime,
    element,
    shareLink,
  };
})();
