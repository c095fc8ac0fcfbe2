// The web UI at /: ask about an image (streamed answers, follow-ups), browse and export the history; the
// review tab is review.js, the reports tab reports.js. Server data goes into the page as text only (see
// common.js).
import {
  applyI18n, button, csrfToken, currentLang, el, fetchJson, formatTime, imageDataUrl, kindBadge, label, loadI18n,
  newId, reviewBadge, reviewFlag, roleAllows, setupLangSwitch, showError, sourceLabel, streamChat, t, thumbnail,
} from "./common.js";
import { loadAudit, renderAudit } from "./audit.js";
import { loadWatches, renderWatches, setupWatches } from "./watches.js";
import { loadReports, renderReports, setupReports } from "./reports.js";
import { loadStats, openReview, renderReview, setupReview } from "./review.js";

const $ = (id) => document.getElementById(id);
const TABS = ["ask", "history", "review", "reports"];
const PER_PAGE = 20;

// ---- tabs ------------------------------------------------------------------------------------------

function showTab() {
  const name = TABS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "ask";
  for (const tab of TABS) {
    $(`panel-${tab}`).hidden = tab !== name;
    const link = document.querySelector(`[data-tab="${tab}"]`);
    if (tab === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (name === "history") {
    loadHistory();
    loadWatches();
    loadAudit();
  }
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

/** The CSV export of the filters as typed; its headers follow the page's language. */
function exportUrl() {
  const params = filterParams();
  if (currentLang() === "en") params.set("lang", "en");
  return `/api/jobs/export.csv?${params}`;
}

async function loadHistory() {
  const params = filterParams();
  $("export").href = exportUrl();
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

/** A table cell that, as a card on a narrow screen, shows its column's name before its content. */
function cell(column, props, ...children) {
  return el("td", { ...props, dataset: { label: t(column) } }, ...children);
}

function answerCell(job) {
  if (job.status !== "done") {
    const badge = label("span", `ui_status_${job.status}`, { class: `badge ${job.status}` });
    return cell("ui_col_answer", {}, badge, el("div", { class: "clamp", text: job.error ?? "" }));
  }
  return cell(
    "ui_col_answer",
    {},
    kindBadge(job.answer_kind),
    reviewFlag(job),
    el("div", { class: "clamp answer", text: job.answer ?? "" }),
    job.correction
      ? el("div", { class: "correction", text: t("ui_review_correction", { text: job.correction }) })
      : null,
  );
}

function historyRow(job) {
  const where = [sourceLabel(job.source), job.file_name ?? job.source_ref].filter(Boolean);
  const review = job.status === "done" ? button("ui_history_review_this", "link", () => openReview(job)) : null;
  return el(
    "tr",
    { dataset: { id: String(job.id) } },
    cell("ui_col_image", { class: "image" }, thumbnail(job)),
    cell("ui_col_time", { class: "nowrap" }, formatTime(job.created_at)),
    cell("ui_col_source", {}, el("div", { text: where[0] }), el("div", { class: "muted small", text: where[1] ?? "" })),
    cell("ui_col_question", {}, el("div", { class: "clamp", text: job.question ?? "" })),
    answerCell(job),
    cell("ui_col_ocr", {}, el("div", { class: "clamp ocr", text: job.ocr_text ?? "" })),
    cell(
      "ui_col_review",
      { class: "actions" },
      reviewBadge(job),
      review,
      label("a", "ui_job_open", { href: `/jobs/${Number(job.id)}`, class: "job-link" }),
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
    $("export").href = exportUrl(); // the filters as typed, even unsearched
  });
}

// ---- start -----------------------------------------------------------------------------------------

async function main() {
  await loadI18n();
  $("logout-form").hidden = document.body.dataset.auth !== "on";
  $("logout-csrf").value = csrfToken(); // logging out is a POST with the session's CSRF token
  setupLangSwitch($("lang"), () => {
    renderHistory();
    renderReview();
    renderReports();
    renderWatches();
    renderAudit();
    applyI18n(document);
  });
  // A viewer cannot review: the tab is hidden (the API refuses a viewer's review either way).
  document.querySelector('[data-tab="review"]').hidden = !roleAllows("reviewer");
  setupAsk();
  setupHistory();
  setupReview();
  setupReports();
  setupWatches();
  window.addEventListener("hashchange", showTab);
  showTab();
  document.body.classList.add("ready");
}

main();
