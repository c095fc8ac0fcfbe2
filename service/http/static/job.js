// One job's own page (/jobs/{id}): every page with the OCR boxes drawn over it, the answer, the lines read,
// the conversation, the sidecar files, review and a re-run. Server data reaches the page as text only: DOM
// built with `el` (common.js) and SVG elements whose text is set through text nodes, never markup.
import {
  applyI18n, el, fetchJson, formatTime, kindBadge, label, loadI18n, reviewBadge, reviewFlag, setupLangSwitch,
  roleAllows, showError, sourceLabel, t,
} from "./common.js";
import { reviewControls } from "./review.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const jobId = Number(location.pathname.split("/").filter(Boolean).pop());
let job = null;

/** An SVG element: attributes set one by one, children appended as nodes or text nodes. */
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  for (const child of children) node.append(child);
  return node;
}

const lowConfidence = (page, line) => Number(line.confidence) < Number(page.review_threshold ?? 0);
const lineKey = (number, index) => `${number}-${index}`;

/** The boxes of one OCR page, in the page image's own pixels, scaled with the image by the viewBox. */
function boxes(ocr, number) {
  const overlay = svg("svg", {
    class: "ocr-boxes",
    viewBox: `0 0 ${Number(ocr.width)} ${Number(ocr.height)}`,
    preserveAspectRatio: "none",
    "aria-hidden": "true",
  });
  ocr.lines.forEach((line, index) => {
    const points = line.box.map(([x, y]) => `${Number(x)},${Number(y)}`).join(" ");
    const kind = lowConfidence(ocr, line) ? "line low" : "line";
    const tip = `${line.text} · ${t("ui_job_confidence", { value: Number(line.confidence).toFixed(4) })}`;
    overlay.append(svg("polygon", { points, class: kind, "data-line": lineKey(number, index) }, svg("title", {}, tip)));
  });
  return overlay;
}

function pageFigure(page, ocr) {
  const n = page.number;
  const img = el("img", { src: page.url, alt: t("ui_job_page_alt", { n }) });
  const frame = el("div", { class: "page-frame" }, img);
  if (ocr?.lines?.length) frame.append(boxes(ocr, n));
  img.addEventListener("error", () => frame.replaceWith(label("p", "ui_job_no_image", { class: "missing muted" })));
  const notes = [t("ui_job_page", { n })];
  if (ocr?.source === "text_layer") notes.push(t("ui_job_text_layer"));
  if (Number(ocr?.rotation)) notes.push(t("ui_job_rotated", { degrees: Number(ocr.rotation) }));
  return el("figure", { class: "page", dataset: { page: String(n) } }, frame, el("figcaption", { class: "small muted", text: notes.join(" · ") }));
}

/** Pointing at a line in the list lights up its box on the page. */
function highlight(key, on) {
  document.querySelector(`polygon[data-line="${key}"]`)?.classList.toggle("active", on);
}

function linesOf(ocr, number) {
  if (ocr.source === "text_layer" || !ocr.lines?.length) {
    return el("p", { class: "plain", text: ocr.text ?? "" });
  }
  const items = ocr.lines.map((line, index) => {
    const key = lineKey(number, index);
    const item = el(
      "li",
      { class: lowConfidence(ocr, line) ? "low" : null, dataset: { line: key } },
      el("span", { class: "text", text: line.text }),
      " ",
      el("span", { class: "confidence", text: t("ui_job_confidence", { value: Number(line.confidence).toFixed(4) }) }),
    );
    item.addEventListener("mouseenter", () => highlight(key, true));
    item.addEventListener("mouseleave", () => highlight(key, false));
    return item;
  });
  return el("ol", { class: "ocr-lines" }, ...items);
}

function renderPages() {
  const ocrPages = job.ocr_lines ?? [];
  $("pages").replaceChildren(...job.pages.map((page) => pageFigure(page, ocrPages[page.number - 1])));
  const threshold = ocrPages.find((page) => page.review_threshold !== undefined)?.review_threshold;
  $("legend").textContent = ocrPages.some((page) => page.lines?.length) ? t("ui_job_legend", { threshold }) : "";
  const lists = ocrPages.map((ocr, index) =>
    el("div", { class: "page-lines" }, el("h3", { text: t("ui_job_page", { n: index + 1 }) }), linesOf(ocr, index + 1)),
  );
  $("lines").replaceChildren(...(lists.length ? lists : [label("p", "ui_job_no_ocr", { class: "muted" })]));
}

function renderAnswer() {
  const title = job.file_name || t("ui_job_title", { id: job.id });
  $("job-title").textContent = title;
  document.title = `${title} · ${t("ui_app_title")}`;
  const meta = [formatTime(job.created_at), sourceLabel(job.source), job.source_ref, t(`ui_status_${job.status}`)];
  if (job.model) meta.push(t("ui_job_model", { model: job.model, ms: Math.round(job.latency_ms ?? 0) }));
  $("job-meta").textContent = meta.filter(Boolean).join(" · ");
  $("question").textContent = job.question ?? "";
  $("badges").replaceChildren(...[kindBadge(job.answer_kind), reviewFlag(job)].filter(Boolean));
  $("answer").textContent = job.status === "done" ? (job.answer ?? "") : (job.error ?? "");
  $("notes").replaceChildren(...(job.notes ?? []).map((note) => el("li", { text: note })));
}

function renderReviewState() {
  const who = job.reviewed_by ? t("ui_job_reviewed_by", { who: job.reviewed_by, time: formatTime(job.reviewed_at) }) : "";
  $("review-state").replaceChildren(reviewBadge(job), who ? ` ${who}` : "");
}

function renderConversation() {
  const turns = [...(job.history ?? []), { role: "user", text: job.question }];
  if (job.answer) turns.push({ role: "assistant", text: job.answer }); // what the model said; review is beside
  $("conversation").replaceChildren(
    ...turns.map((turn) =>
      el(
        "li",
        { class: `turn ${turn.role === "user" ? "user" : "assistant"}` },
        el("span", { class: "who", text: t(turn.role === "user" ? "ui_ask_you" : "ui_ask_bot") }),
        el("div", { class: "text", text: turn.text ?? "" }),
      ),
    ),
  );
}

function renderSidecars() {
  const files = job.sidecars ?? [];
  $("sidecars").replaceChildren(
    ...(files.length
      ? files.map((file) =>
          el(
            "li",
            {},
            el("strong", { text: file.kind.toUpperCase() }),
            " ",
            el("code", { text: file.path }),
            file.exists ? "" : ` ${t("ui_job_sidecar_missing")}`,
          ),
        )
      : [label("li", "ui_job_sidecars_none", { class: "muted" })]),
  );
}

function render() {
  renderAnswer();
  renderPages();
  renderReviewState();
  renderConversation();
  renderSidecars();
}

async function rerun() {
  const status = $("rerun-status");
  status.textContent = "";
  status.classList.remove("error");
  try {
    const body = await fetchJson(`/api/jobs/${jobId}/rerun`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    const fresh = Number(body?.id);
    status.replaceChildren(label("span", "ui_job_rerun_done"));
    if (fresh && fresh !== jobId) {
      status.append(" ", el("a", { href: `/jobs/${fresh}`, text: t("ui_job_rerun_new", { id: fresh }) }));
    }
  } catch (err) {
    status.textContent = err.message; // the server's own message, whatever it answered (404 and 405 too)
    status.classList.add("error");
  }
}

async function main() {
  await loadI18n();
  setupLangSwitch($("lang"), () => {
    if (job) render();
    applyI18n(document);
  });
  $("rerun").addEventListener("click", rerun);
  // Controls a role cannot use are hidden; the API refuses them either way.
  $("rerun").closest("section").hidden = !roleAllows("admin");
  try {
    job = await fetchJson(`/api/jobs/${jobId}`);
  } catch (err) {
    showError("job-error", err.message);
    document.body.classList.add("ready");
    return;
  }
  render();
  if (job.status === "done" && roleAllows("reviewer")) {
    $("review").replaceChildren(
      reviewControls(job, (updated) => {
        job = { ...job, ...updated };
        renderReviewState();
      }).node,
    );
  }
  $("job").hidden = false;
  document.body.classList.add("ready");
}

main();
