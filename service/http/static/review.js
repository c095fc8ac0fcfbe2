// Staff review. `reviewControls` is the correction box and the three verdicts, shared by the review tab and a
// job's own page (/jobs/{id}); the rest is the review tab: a sample of N done jobs (the ones the reader
// flagged first, as the server orders them), one batch at a time, with keyboard shortcuts (j/k, 1, e).
import {
  button, el, fetchJson, formatTime, kindBadge, label, reviewBadge, reviewFlag, showError, sourceLabel, t,
  thumbnail,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const MAX_SAMPLE = 200; // the server's limit for one sample (service/http/review_api.py)

/**
 * The correction box and verdict buttons for one done job. The box holds the answer (or the correction made
 * earlier) and nothing else, ready to edit; saving it unchanged records "correct", never a "correction" that
 * equals the answer. `onSaved(updated)` runs after each saved verdict.
 */
export function reviewControls(job, onSaved) {
  const id = `correction-${Number(job.id)}`;
  const box = el("textarea", { id, rows: 4, class: "correction-input" });
  box.value = job.correction ?? job.answer ?? "";
  box.placeholder = t("ui_review_correction_placeholder");
  box.dataset.i18nPlaceholder = "ui_review_correction_placeholder";
  const status = el("p", { class: "saved", role: "status" });

  async function save(verdict) {
    const unchanged = verdict === "corrected" && box.value.trim() === (job.answer ?? "").trim();
    const sent = unchanged ? "correct" : verdict;
    status.textContent = "";
    try {
      const updated = await fetchJson(`/api/jobs/${Number(job.id)}/review`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ verdict: sent, correction: sent === "corrected" ? box.value : null }),
      });
      status.replaceChildren(label("span", unchanged ? "ui_review_saved_unchanged" : "ui_review_saved"));
      status.classList.remove("error");
      onSaved?.(updated);
    } catch (err) {
      status.textContent = err.message;
      status.classList.add("error");
    }
  }

  const node = el(
    "div",
    { class: "review-controls" },
    label("label", "ui_review_correction_label", { for: id, class: "small muted" }),
    box,
    el(
      "div",
      { class: "row" },
      button("ui_review_mark_correct", "primary", () => save("correct")),
      button("ui_review_save_correction", "secondary", () => save("corrected")),
      button("ui_review_undo", "link", () => save("unreviewed")),
    ),
    status,
  );
  return { node, markCorrect: () => save("correct"), edit: () => box.focus() };
}

// ---- statistics ------------------------------------------------------------------------------------

let stats = null;

export async function loadStats() {
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

// ---- cards -----------------------------------------------------------------------------------------

const controlsOf = new WeakMap(); // card → its reviewControls

function reviewCard(job) {
  const badge = el("span", {}, reviewBadge(job));
  const controls = reviewControls(job, (updated) => {
    badge.replaceChildren(reviewBadge(updated));
    loadStats();
  });
  const when = `${formatTime(job.created_at)} · ${sourceLabel(job.source)}`;
  const meta = el("p", { class: "muted small" }, when, " ", badge, " ", kindBadge(job.answer_kind), " ", reviewFlag(job));
  const card = el(
    "article",
    { class: "review-card", tabindex: "-1", dataset: { id: String(job.id) } },
    thumbnail(job),
    el(
      "div",
      { class: "review-body" },
      meta,
      el("p", { class: "question", text: job.question ?? "" }),
      el("div", { class: "answer", text: job.answer ?? "" }),
      controls.node,
      label("a", "ui_job_open", { href: `/jobs/${Number(job.id)}`, class: "small" }),
    ),
  );
  controlsOf.set(card, controls);
  return card;
}

/** Put `job` at the top of the review list (from the history's 「审核此条」) and show the review tab. */
export function openReview(job) {
  const list = $("review-list");
  list.querySelector(`[data-id="${Number(job.id)}"]`)?.remove();
  list.querySelector(".empty")?.remove();
  list.prepend(reviewCard(job));
  location.hash = "#review";
}

// ---- sampling, a batch at a time -------------------------------------------------------------------

const batch = { size: 20, seen: new Set(), more: false };

function sampleSize() {
  const value = Math.round(Number($("sample-size").value));
  return Number.isFinite(value) ? Math.min(MAX_SAMPLE, Math.max(1, value)) : 20;
}

/** The next batch of N unreviewed jobs not shown yet in this round (`fresh`: start a new round). */
async function sample(fresh) {
  if (fresh) batch.seen = new Set();
  batch.size = sampleSize();
  // The server draws at random each time (flagged jobs first): ask for enough to skip the ones shown.
  const asked = Math.min(MAX_SAMPLE, batch.size + batch.seen.size);
  try {
    const body = await fetchJson("/api/review/sample", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ n: asked }),
    });
    const drawn = body.items ?? [];
    const items = drawn.filter((job) => !batch.seen.has(job.id)).slice(0, batch.size);
    for (const job of items) batch.seen.add(job.id);
    batch.more = drawn.length === asked && items.length === batch.size;
    const none = label("p", "ui_review_none", { class: "empty muted" });
    $("review-list").replaceChildren(...(items.length ? items.map(reviewCard) : [none]));
    showError("review-error", null);
  } catch (err) {
    showError("review-error", err.message);
  }
  renderReview();
}

/** The texts with numbers in them (re-rendered when the language changes). */
export function renderReview() {
  renderStats();
  $("sample-next").textContent = t("ui_review_next", { n: batch.size });
  $("sample-next").hidden = !batch.more;
}

// ---- keyboard --------------------------------------------------------------------------------------

function cards() {
  return [...$("review-list").querySelectorAll(".review-card")];
}

function focusCard(card) {
  for (const other of cards()) other.classList.toggle("current", other === card);
  card.focus({ preventScroll: true });
  card.scrollIntoView({ block: "nearest" });
}

/** j / k move between cards, 1 marks the current one correct, e edits its correction; never while typing. */
function onKey(event) {
  if ($("panel-review").hidden || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
  const list = cards();
  const current = list.find((card) => card.classList.contains("current"));
  if (event.target.closest?.("input, textarea, select, [contenteditable]")) {
    if (event.key === "Escape" && current) focusCard(current); // leave the box, keep the place
    return;
  }
  if (!list.length) return;
  const index = list.indexOf(current);
  if (event.key === "j" || event.key === "k") {
    const step = event.key === "j" ? 1 : -1;
    const next = index < 0 ? 0 : Math.min(list.length - 1, Math.max(0, index + step));
    focusCard(list[next]);
  } else if (event.key === "1" && current) {
    controlsOf.get(current)?.markCorrect();
  } else if (event.key === "e" && current) {
    controlsOf.get(current)?.edit();
  } else {
    return;
  }
  event.preventDefault();
}

export function setupReview() {
  $("sample").addEventListener("click", () => sample(true));
  $("sample-next").addEventListener("click", () => sample(false));
  $("review-list").addEventListener("focusin", (event) => {
    const card = event.target.closest(".review-card");
    if (card && !card.classList.contains("current")) {
      for (const other of cards()) other.classList.toggle("current", other === card);
    }
  });
  document.addEventListener("keydown", onKey);
  renderReview();
}
