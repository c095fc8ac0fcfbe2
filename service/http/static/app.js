// The web UI at /: ask about an image (streamed answers, follow-ups), browse and export the history, and
// review answers. Server data goes into the page as text only (see common.js).
import {
  applyI18n, csrfToken, el, fetchJson, formatTime, imageDataUrl, kindBadge, loadI18n, reviewFlag, newId,
  setupLangSwitch, sourceLabel, streamChat, t,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const TABS = ["ask", "history", "review", "reports"];
const PER_PAGE = 20;

/** An element whose text is the catalogue message `code`, re-translated when the language changes. */
const label = (tag, code, props = {}) => el(tag, { ...props, dataset: { i18n: code }, text: t(code) });
const button = (code, kind, onclick) => label("button", code, { type: "button", class: kind, onclick });

function showError(id, message) {
  const node = $(id);
  node.textContent = message ?? "";
  node.hidden = !message;
}

// ---- tabs ------------------------------------------------------------------------------------------

function showTab() {
  const name = TABS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "ask";
  for (const tab of TABS) {
    $(`panel-${tab}`).hidden = tab !== name;
    document.querySelector(`[data-tab="${tab}"]`).setAttribute("aria-selected", String(tab === name));
  }
  if (name === "history") loadHistory();
  if (name === "review") loadStats();
  if (name === "reports") loadReports();
}

// ---- ask -------------------------------------------------------------------------------------------

const ask = {
  conversation: newId(),
  messages: [], // what was asked and answered so far, resent in full with every follow-up
  file: null,
  dataUrl: null,
  previewUrl: null,
  controller: null, // the request in flight, if any
};

/**
 * Whether the file picker's `accept` list takes `file`: by type, or by extension when the browser knows no
 * type (HEIC and AVIF on many desktops). The list in index.html is service/formats.py's accept_attribute().
 */
function acceptable(file, accept) {
  const name = (file.name ?? "").toLowerCase();
  const type = (file.type ?? "").toLowerCase();
  return accept.split(",").some((token) => {
    if (token.startsWith(".")) return name.endsWith(token);
    if (token.endsWith("/*")) return type.startsWith(token.slice(0, -1));
    return type === token;
  });
}

function chooseImage(file) {
  if (!file) return;
  if (!acceptable(file, $("file").accept)) {
    showError("ask-error", t("ui_error_format"));
    return;
  }
  if (ask.previewUrl) URL.revokeObjectURL(ask.previewUrl);
  ask.file = file;
  ask.dataUrl = null;
  ask.previewUrl = URL.createObjectURL(file);
  // A PDF or HEIC the browser cannot show still goes to the server; its name stands in for the preview.
  $("preview").alt = file.name ?? "";
  $("preview").src = ask.previewUrl;
  $("preview").hidden = false;
  $("dropzone").classList.add("has-image");
  newConversation(); // a new picture is a new conversation: follow-ups are about one image
  $("question").focus();
}

function newConversation() {
  ask.controller?.abort();
  ask.controller = null; // the aborted request sees it was replaced and leaves the new page alone
  setBusy(false);
  ask.conversation = newId();
  ask.messages = [];
  $("conversation").replaceChildren(label("p", "ui_ask_empty", { class: "empty muted" }));
  showError("ask-error", null);
}

function addBubble(role, text) {
  const conversation = $("conversation");
  conversation.querySelector(".empty")?.remove();
  const who = label("span", role === "user" ? "ui_ask_you" : "ui_ask_bot", { class: "who" });
  const body = el("div", { class: "text", text });
  const bubble = el("div", { class: `bubble ${role}` }, who, body);
  conversation.append(bubble);
  bubble.scrollIntoView({ block: "end" });
  return bubble;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

async function sendQuestion(event) {
  event.preventDefault();
  if (ask.controller) return; // one question at a time
  const question = $("question").value.trim();
  if (!ask.file) return showError("ask-error", t("ui_ask_need_image"));
  if (!question) return showError("ask-error", t("ui_ask_need_question"));
  showError("ask-error", null);
  const controller = (ask.controller = new AbortController());
  setBusy(true);
  const userBubble = addBubble("user", question);
  const answer = addBubble("assistant", "");
  answer.classList.add("pending");
  $("question").value = "";
  try {
    ask.dataUrl ??= await imageDataUrl(ask.file);
    // The image rides on the first question; follow-ups resend the whole conversation, image included.
    const content = ask.messages.length
      ? question
      : [{ type: "image_url", image_url: { url: ask.dataUrl } }, { type: "text", text: question }];
    const outgoing = [...ask.messages, { role: "user", content }];
    const text = await streamChat({
      messages: outgoing,
      source: "web",
      conversation: ask.conversation,
      signal: controller.signal,
      onText: (sofar) => {
        answer.querySelector(".text").textContent = sofar;
        answer.scrollIntoView({ block: "end" });
      },
      onKind: (kind) => {
        const badge = kindBadge(kind);
        if (badge) answer.querySelector(".who").after(badge);
      },
    });
    if (controller === ask.controller) ask.messages = [...outgoing, { role: "assistant", content: text }];
  } catch (err) {
    if (controller !== ask.controller) return; // a new conversation replaced this one
    userBubble.classList.add("failed");
    answer.remove();
    if (err.name !== "AbortError") showError("ask-error", err.message);
    $("question").value = question; // let the person try again without retyping
  } finally {
    answer.classList.remove("pending");
    if (controller === ask.controller) ask.controller = null;
    setBusy(Boolean(ask.controller));
  }
}

function setupAsk() {
  const zone = $("dropzone");
  zone.addEventListener("click", () => $("file").click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") $("file").click();
  });
  $("file").addEventListener("change", () => chooseImage($("file").files[0]));
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    chooseImage(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    if ($("panel-ask").hidden) return;
    const item = [...(e.clipboardData?.items ?? [])].find((i) => i.type.startsWith("image/"));
    if (!item) return; // pasting text into the question box stays ordinary
    e.preventDefault();
    chooseImage(item.getAsFile());
  });
  $("ask-form").addEventListener("submit", sendQuestion);
  $("question").addEventListener("keydown", (e) => {
    // Enter sends; Shift+Enter is a new line; Enter that confirms a Chinese IME composition is neither.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) sendQuestion(e);
  });
  $("new-conversation").addEventListener("click", newConversation);
  $("stop").addEventListener("click", () => ask.controller?.abort());
}

// ---- history ---------------------------------------------------------------------------------------

const listing = { page: 1, total: 0, items: [], request: 0 };

function filterParams() {
  const params = new URLSearchParams();
  const fields = [["q", "q"], ["date-from", "date_from"], ["date-to", "date_to"], ["source", "source"]];
  for (const [id, name] of fields) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

async function loadHistory() {
  const params = filterParams();
  $("export").href = `/api/jobs/export.csv?${params}`;
  params.set("page", String(listing.page));
  params.set("per_page", String(PER_PAGE));
  const request = ++listing.request; // a slow earlier search must not overwrite a newer one
  try {
    const body = await fetchJson(`/api/jobs?${params}`);
    if (request !== listing.request) return;
    Object.assign(listing, { items: body.items ?? [], total: body.total ?? 0 });
    showError("history-error", null);
  } catch (err) {
    if (request !== listing.request) return;
    listing.items = [];
    showError("history-error", err.message);
  }
  renderHistory();
}

function thumbnail(job) {
  const src = `/api/jobs/${Number(job.id)}/thumbnail`;
  const img = el("img", { class: "thumb", alt: "", loading: "lazy", src });
  img.addEventListener("error", () => img.replaceWith(el("span", { class: "thumb missing", text: "—" })));
  return img;
}

function answerCell(job) {
  if (job.status !== "done") {
    const badge = label("span", `ui_status_${job.status}`, { class: `badge ${job.status}` });
    return el("td", {}, badge, el("div", { class: "clamp", text: job.error ?? "" }));
  }
  return el(
    "td",
    {},
    kindBadge(job.answer_kind),
    reviewFlag(job),
    el("div", { class: "clamp answer", text: job.answer ?? "" }),
    job.correction
      ? el("div", { class: "correction", text: t("ui_review_correction", { text: job.correction }) })
      : null,
  );
}

function reviewBadge(job) {
  const status = job.review_status ?? "unreviewed";
  return label("span", `ui_review_${status}`, { class: `badge review-${status}` });
}

function historyRow(job) {
  const where = [sourceLabel(job.source), job.file_name ?? job.source_ref].filter(Boolean);
  return el(
    "tr",
    { dataset: { id: String(job.id) } },
    el("td", {}, thumbnail(job)),
    el("td", { class: "nowrap", text: formatTime(job.created_at) }),
    el("td", {}, el("div", { text: where[0] }), el("div", { class: "muted small", text: where[1] ?? "" })),
    el("td", {}, el("div", { class: "clamp", text: job.question ?? "" })),
    answerCell(job),
    el("td", {}, el("div", { class: "clamp ocr", text: job.ocr_text ?? "" })),
    el(
      "td",
      {},
      reviewBadge(job),
      job.status === "done"
        ? button("ui_history_review_this", "link", () => openReview(job))
        : null,
    ),
  );
}

function renderHistory() {
  $("history-rows").replaceChildren(...listing.items.map(historyRow));
  $("history-empty").hidden = listing.items.length > 0;
  const pages = Math.max(1, Math.ceil(listing.total / PER_PAGE));
  const where = t("ui_history_page", { page: listing.page, pages });
  $("page-info").textContent = `${where} · ${t("ui_history_total", { total: listing.total })}`;
  $("prev").disabled = listing.page <= 1;
  $("next").disabled = listing.page >= pages;
}

function setupHistory() {
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    listing.page = 1;
    loadHistory();
  });
  $("prev").addEventListener("click", () => {
    listing.page = Math.max(1, listing.page - 1);
    loadHistory();
  });
  $("next").addEventListener("click", () => {
    listing.page += 1;
    loadHistory();
  });
  $("export").addEventListener("click", () => {
    $("export").href = `/api/jobs/export.csv?${filterParams()}`; // the filters as typed, even unsearched
  });
}

// ---- review ----------------------------------------------------------------------------------------

let stats = null;

async function loadStats() {
  try {
    stats = await fetchJson("/api/review/stats");
    showError("review-error", null);
  } catch (err) {
    showError("review-error", err.message);
  }
  renderStats();
}

const percent = (value) => (value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)}%`);

function renderStats() {
  if (!stats) return;
  $("stats-done").textContent = t("ui_stats_done", { done: stats.done });
  const share = percent(stats.reviewed_share);
  $("stats-reviewed").textContent = t("ui_stats_reviewed", { reviewed: stats.reviewed, share });
  const interval = {
    accuracy: percent(stats.accuracy),
    low: percent(stats.ci_low),
    high: percent(stats.ci_high),
  };
  $("stats-accuracy").textContent =
    stats.accuracy === null || stats.accuracy === undefined
      ? t("ui_stats_no_reviews")
      : t("ui_stats_accuracy", interval);
}

function reviewCard(job) {
  const status = el("p", { class: "saved", role: "status" });
  const badge = el("span", {}, reviewBadge(job));
  const when = `${formatTime(job.created_at)} · ${sourceLabel(job.source)}`;
  const correction = el("textarea", { rows: 3, class: "correction-input" });
  correction.value = job.correction ?? job.answer ?? "";
  correction.placeholder = t("ui_review_correction_placeholder");
  correction.dataset.i18nPlaceholder = "ui_review_correction_placeholder";
  const card = el(
    "article",
    { class: "review-card", dataset: { id: String(job.id) } },
    thumbnail(job),
    el(
      "div",
      { class: "review-body" },
      el("p", { class: "muted small" }, when, " ", badge, " ", kindBadge(job.answer_kind), " ", reviewFlag(job)),
      el("p", { class: "question", text: job.question ?? "" }),
      el("div", { class: "answer", text: job.answer ?? "" }),
      correction,
      el(
        "div",
        { class: "row" },
        button("ui_review_mark_correct", "primary", () => save("correct")),
        button("ui_review_save_correction", "secondary", () => save("corrected")),
        button("ui_review_undo", "link", () => save("unreviewed")),
      ),
      status,
    ),
  );
  async function save(verdict) {
    status.textContent = "";
    try {
      const updated = await fetchJson(`/api/jobs/${Number(job.id)}/review`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ verdict, correction: verdict === "corrected" ? correction.value : null }),
      });
      badge.replaceChildren(reviewBadge(updated));
      status.replaceChildren(label("span", "ui_review_saved"));
      status.classList.remove("error");
      loadStats();
    } catch (err) {
      status.textContent = err.message;
      status.classList.add("error");
    }
  }
  return card;
}

function openReview(job) {
  const list = $("review-list");
  list.querySelector(`[data-id="${Number(job.id)}"]`)?.remove();
  list.querySelector(".empty")?.remove();
  list.prepend(reviewCard(job));
  location.hash = "#review";
}

async function sample() {
  try {
    const body = await fetchJson("/api/review/sample", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ n: 20 }),
    });
    const items = body.items ?? [];
    const none = label("p", "ui_review_none", { class: "empty muted" });
    $("review-list").replaceChildren(...(items.length ? items.map(reviewCard) : [none]));
    showError("review-error", null);
  } catch (err) {
    showError("review-error", err.message);
  }
}

// ---- reports ---------------------------------------------------------------------------------------

let reports = { items: [], schedules: [] };

async function loadReports() {
  try {
    reports = await fetchJson("/api/reports");
    showError("reports-error", null);
  } catch (err) {
    showError("reports-error", err.message);
  }
  renderReports();
}

function scheduleLine(schedule) {
  const next = schedule.next_run
    ? t("ui_reports_next", { time: formatTime(schedule.next_run) })
    : t("ui_reports_not_scheduled");
  const last = schedule.last_run;
  const failed = last && last.status === "failed" ? t("ui_reports_last_failed", { reason: last.error }) : "";
  const when = `${schedule.schedule} (${schedule.timezone})`;
  return el("li", {}, el("strong", { text: schedule.name }), ` ${when} · ${next}`, failed ? ` · ${failed}` : "");
}

function reportRow(item) {
  // The URLs come from the server, built from folder names it checked; they are set as attributes only.
  const links = item.files.map((file) => {
    const text = t(`ui_reports_file_${file.kind}`);
    return el("a", { href: file.url, target: "_blank", rel: "noopener", title: file.name, text });
  });
  return el(
    "tr",
    {},
    el("td", { text: item.name }),
    el("td", { class: "nowrap", text: item.stamp }),
    el("td", { class: "report-files" }, ...links),
  );
}

function renderReports() {
  $("report-schedules").replaceChildren(...(reports.schedules ?? []).map(scheduleLine));
  $("report-rows").replaceChildren(...(reports.items ?? []).map(reportRow));
  $("reports-empty").hidden = (reports.items ?? []).length > 0;
}

// ---- start -----------------------------------------------------------------------------------------

async function main() {
  await loadI18n();
  $("logout-form").hidden = document.body.dataset.auth !== "on";
  $("logout-csrf").value = csrfToken(); // logging out is a POST with the session's CSRF token
  setupLangSwitch($("lang"), () => {
    renderHistory();
    renderStats();
    renderReports();
    applyI18n(document);
  });
  setupAsk();
  setupHistory();
  $("sample").addEventListener("click", sample);
  window.addEventListener("hashchange", showTab);
  showTab();
  document.body.classList.add("ready");
}

main();
