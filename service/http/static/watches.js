// The watches section of the history tab: each watched folder's progress (GET /api/watches) and, for an
// admin, the backlog's pause and resume button. Server data goes into the page as text only.
import { el, fetchJson, roleAllows, showError, t } from "./common.js";

const $ = (id) => document.getElementById(id);
let state = null; // the last /api/watches answer

function duration(seconds) {
  if (seconds === null || seconds === undefined) return t("ui_watch_left_unknown");
  if (seconds < 60) return t("ui_watch_left_seconds", { n: seconds });
  const minutes = Math.round(seconds / 60);
  if (minutes < 120) return t("ui_watch_left_minutes", { n: minutes });
  return t("ui_watch_left_hours", { n: Math.round(minutes / 60) });
}

export function renderWatches() {
  if (!state) return;
  const section = $("watches");
  section.hidden = state.watches.length === 0;
  const { paused, by } = state.backlog;
  $("backlog-state").textContent = paused ? t("ui_backlog_paused_by", { by: by ?? "" }) : t("ui_backlog_running");
  const toggle = $("backlog-toggle");
  toggle.hidden = !roleAllows("admin");
  toggle.textContent = t(paused ? "ui_backlog_resume" : "ui_backlog_pause");
  toggle.dataset.paused = paused ? "1" : "0";
  $("watch-rows").replaceChildren(
    ...state.watches.map((watch) =>
      el(
        "tr",
        { dataset: { watch: watch.key } },
        el("td", { text: watch.name || watch.key }),
        el("td", { text: String(watch.queued) }),
        el("td", { text: String(watch.running) }),
        el("td", { text: String(watch.done) }),
        el("td", { text: String(watch.failed) }),
        el("td", { text: String(watch.per_minute) }),
        el("td", { text: watch.paused && watch.queued ? t("ui_backlog_paused_short") : duration(watch.seconds_left) }),
      ),
    ),
  );
}

export async function loadWatches() {
  try {
    state = await fetchJson("/api/watches");
    $("watches-error").hidden = true;
  } catch (err) {
    showError("watches-error", err.message);
    return;
  }
  renderWatches();
}

async function toggleBacklog() {
  const paused = $("backlog-toggle").dataset.paused === "1";
  try {
    await fetchJson(`/api/backlog/${paused ? "resume" : "pause"}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
  } catch (err) {
    showError("watches-error", err.message);
    return;
  }
  await loadWatches();
}

export function setupWatches() {
  $("backlog-toggle").addEventListener("click", toggleBacklog);
}

