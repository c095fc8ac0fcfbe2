// The audit log section of the history tab, for admins only (the API refuses anyone else): the newest
// entries (who did what to which job, watch or account, and when) and the CSV of them all. Text only.
import { el, fetchJson, formatTime, roleAllows, showError, t } from "./common.js";

const $ = (id) => document.getElementById(id);
const SHOWN = 50;
let items = null; // the last page of /api/audit

function target(entry) {
  const details = entry.details ?? {};
  const extra = Object.entries(details)
    .filter(([, value]) => value !== null && value !== "" && typeof value !== "object")
    .map(([key, value]) => `${key}=${value}`)
    .join(" ");
  return [entry.target, extra].filter(Boolean).join(" · ");
}

export function renderAudit() {
  if (!items) return;
  $("audit-empty").hidden = items.length > 0;
  $("audit-rows").replaceChildren(
    ...items.map((entry) =>
      el(
        "tr",
        { dataset: { id: String(entry.id) } },
        el("td", { class: "nowrap", text: formatTime(entry.at) }),
        el("td", { text: entry.actor ?? "" }),
        el("td", { text: entry.action ?? "" }),
        el("td", { text: target(entry) }),
      ),
    ),
  );
}

export async function loadAudit() {
  const section = $("audit");
  section.hidden = !roleAllows("admin");
  if (section.hidden) return;
  try {
    items = (await fetchJson(`/api/audit?per_page=${SHOWN}`)).items ?? [];
    $("audit-error").hidden = true;
  } catch (err) {
    showError("audit-error", err.message);
    return;
  }
  renderAudit();
}
