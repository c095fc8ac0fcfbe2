// The Reports tab: the schedules, every report written so far, and 「生成报告」 for any days (by default
// yesterday in the institution's timezone, named on the page), written at once by the server.
import { el, fetchJson, formatTime, label, showError, t } from "./common.js";

const $ = (id) => document.getElementById(id);

let reports = { items: [], schedules: [], names: [], default_period: null };
let formFilled = false; // the person's own choice of report and days survives a reload of the list

export async function loadReports() {
  try {
    reports = await fetchJson("/api/reports");
    showError("reports-error", null);
  } catch (err) {
    showError("reports-error", err.message);
  }
  fillForm();
  renderReports();
}

function fillForm() {
  const names = reports.names ?? [];
  const chosen = $("report-name").value;
  $("report-name").replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
  if (names.includes(chosen)) $("report-name").value = chosen;
  const period = reports.default_period;
  if (period && !formFilled) {
    $("report-from").value = period.date_from;
    $("report-to").value = period.date_to;
    formFilled = true;
  }
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

function fileLinks(item) {
  // The URLs come from the server, built from folder names it checked; they are set as attributes only.
  return item.files.map((file) => {
    const text = t(`ui_reports_file_${file.kind}`);
    return el("a", { href: file.url, target: "_blank", rel: "noopener", title: file.name, text });
  });
}

function reportRow(item) {
  return el(
    "tr",
    {},
    el("td", { text: item.name, dataset: { label: t("ui_reports_col_name") } }),
    el("td", { class: "nowrap", text: item.stamp, dataset: { label: t("ui_reports_col_period") } }),
    el("td", { class: "report-files", dataset: { label: t("ui_reports_col_files") } }, ...fileLinks(item)),
  );
}

/** Everything with numbers or dates in it (re-rendered when the language changes). */
export function renderReports() {
  $("report-schedules").replaceChildren(...(reports.schedules ?? []).map(scheduleLine));
  $("report-rows").replaceChildren(...(reports.items ?? []).map(reportRow));
  $("reports-empty").hidden = (reports.items ?? []).length > 0;
  const period = reports.default_period;
  $("report-default").textContent = period
    ? t("ui_reports_default_period", { date: period.date_from, timezone: period.timezone })
    : "";
}

async function generate(event) {
  event.preventDefault();
  const status = $("generate-status");
  const submit = $("generate").querySelector("button[type=submit]");
  submit.disabled = true;
  status.replaceChildren(label("span", "ui_reports_generating"));
  status.classList.remove("error");
  try {
    const body = await fetchJson("/api/reports/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        name: $("report-name").value || null,
        date_from: $("report-from").value || null,
        date_to: $("report-to").value || null,
      }),
    });
    const item = body.item;
    status.replaceChildren(
      t("ui_reports_generated", { name: item.name, period: item.stamp }),
      " ",
      ...fileLinks(item).flatMap((link) => [link, " "]),
    );
    await loadReports();
  } catch (err) {
    status.textContent = err.message;
    status.classList.add("error");
  } finally {
    submit.disabled = false;
  }
}

export function setupReports() {
  $("generate").addEventListener("submit", generate);
}
