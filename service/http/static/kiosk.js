// The museum kiosk: photograph an exhibit, tap a preset question or type one, ask follow-ups about the same
// photo, and after a quiet spell forget everything so the next visitor sees nothing of the last one.
import {
  currentLang, defaultLang, el, fetchJson, imageDataUrl, kindBadge, loadI18n, newId, setLang, setupLangSwitch,
  streamChat, t, urlToken,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const token = urlToken();
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
// The warning shows this long before the reset (or for the last third of a short idle time).
const WARNING_MS = 10_000;

let config = { title: "", presets: [], title_en: "", presets_en: [], idle_seconds: 90, max_turns: 6 };
let visit = freshVisit();
let idleTimer = null;
let warningTimer = null;
let refreshLangLabel = () => {};

/** Everything one visitor leaves behind; replaced wholesale on reset so nothing lingers in memory. */
function freshVisit() {
  return {
    file: null,
    dataUrl: null,
    previewUrl: null,
    messages: [],
    conversation: newId(),
    turns: 0,
    controller: null,
  };
}

function showError(message) {
  $("kiosk-error").textContent = message ?? "";
  $("kiosk-error").hidden = !message;
}

function renderTurns() {
  const left = Math.max(0, config.max_turns - visit.turns);
  const done = left === 0;
  let text = "";
  if (done) text = t("ui_kiosk_max_turns");
  else if (visit.file && visit.turns > 0) text = t("ui_kiosk_turns_left", { n: left });
  $("turns").textContent = text;
  $("turns").classList.toggle("done", done);
  for (const control of document.querySelectorAll("#presets button, #free button, #free input")) {
    control.disabled = done || Boolean(visit.controller);
  }
}

/** The heading and preset questions in the visitor's language ([kiosk] title_en / presets_en in English). */
function renderWelcome() {
  const english = currentLang() === "en";
  const title = english && config.title_en ? config.title_en : config.title;
  const presets = english && config.presets_en?.length ? config.presets_en : config.presets;
  $("title").textContent = title;
  document.title = title || document.title;
  $("presets").replaceChildren(
    ...presets.map((text) => el("button", { type: "button", text, onclick: () => ask(text) })),
  );
  renderTurns(); // the new buttons follow the turn limit too
}

// ---- the photo -------------------------------------------------------------------------------------

function choosePhoto(file) {
  if (!file) return;
  const { controller, previewUrl } = visit;
  controller?.abort();
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  visit = freshVisit(); // a new photo is a new conversation
  visit.file = file;
  visit.previewUrl = URL.createObjectURL(file);
  $("photo").src = visit.previewUrl;
  $("photo-frame").hidden = false;
  $("camera-button").hidden = true;
  $("hint").hidden = true;
  $("answers").replaceChildren();
  showError(null);
  renderTurns();
}

// ---- asking ----------------------------------------------------------------------------------------

async function ask(question) {
  question = question.trim();
  if (!question || visit.controller) return;
  if (!visit.file) {
    showError(t("ui_kiosk_need_photo"));
    $("camera-button").classList.remove("attention");
    void $("camera-button").offsetWidth; // restart the animation
    $("camera-button").classList.add("attention");
    return;
  }
  if (visit.turns >= config.max_turns) return renderTurns();
  showError(null);
  const current = visit;
  const controller = (current.controller = new AbortController());
  const answer = el("p", { class: "a" });
  const card = el("article", { class: "qa pending" }, el("p", { class: "q", text: question }), answer);
  $("answers").append(card);
  card.scrollIntoView({ behavior: "smooth", block: "end" });
  $("question").value = "";
  renderTurns();
  stopIdleTimers(); // a visitor waiting for an answer is not idle
  try {
    current.dataUrl ??= await imageDataUrl(current.file);
    const content = current.messages.length
      ? question
      : [{ type: "image_url", image_url: { url: current.dataUrl } }, { type: "text", text: question }];
    const outgoing = [...current.messages, { role: "user", content }];
    const text = await streamChat({
      messages: outgoing,
      source: "kiosk",
      conversation: current.conversation,
      token,
      signal: controller.signal,
      onText: (sofar) => {
        answer.textContent = sofar;
      },
      onKind: (kind) => {
        const badge = kindBadge(kind);
        if (badge) card.querySelector(".q").append(" ", badge);
      },
    });
    current.messages = [...outgoing, { role: "assistant", content: text }];
    current.turns += 1;
  } catch (err) {
    if (visit !== current) return; // reset or a new photo meanwhile: that page is gone
    card.classList.add("failed");
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    card.classList.remove("pending");
    current.controller = null;
    if (visit === current) {
      renderTurns();
      card.scrollIntoView({ behavior: "smooth", block: "end" });
      armIdleTimers();
    }
  }
}

// ---- idle reset ------------------------------------------------------------------------------------

function stopIdleTimers() {
  clearTimeout(idleTimer);
  clearTimeout(warningTimer);
  $("idle-warning").hidden = true;
}

function armIdleTimers() {
  stopIdleTimers();
  if (visit.controller) return; // re-armed when the answer is complete
  const idleMs = config.idle_seconds * 1000;
  idleTimer = setTimeout(reset, idleMs);
  const hasTrace = visit.file || $("question").value || $("answers").childElementCount;
  if (hasTrace) {
    warningTimer = setTimeout(() => {
      $("idle-warning").hidden = false;
    }, idleMs - Math.min(WARNING_MS, idleMs / 3));
  }
}

/** Forget the visitor: photo, conversation, answers, typed text, language; in the DOM and in memory. */
function reset() {
  const { controller, previewUrl } = visit;
  controller?.abort();
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  visit = freshVisit();
  $("camera").value = "";
  $("photo").removeAttribute("src");
  $("photo-frame").hidden = true;
  $("camera-button").hidden = false;
  $("hint").hidden = false;
  $("answers").replaceChildren();
  $("question").value = "";
  document.activeElement?.blur(); // closes the on-screen keyboard
  showError(null);
  if (defaultLang()) {
    setLang(defaultLang(), { remember: false });
    refreshLangLabel();
  }
  renderWelcome();
  window.scrollTo(0, 0);
  armIdleTimers();
}

// ---- start -----------------------------------------------------------------------------------------

async function main() {
  // A kiosk always greets a new visitor in the default language, whatever the last one chose.
  await loadI18n({ useSaved: false });
  refreshLangLabel = setupLangSwitch($("lang"), renderWelcome, { remember: false });
  try {
    config = await fetchJson("/api/config/kiosk", { headers: authHeaders });
  } catch (err) {
    showError(err.message);
  }
  renderWelcome();
  $("camera").addEventListener("change", () => choosePhoto($("camera").files[0]));
  $("free").addEventListener("submit", (e) => {
    e.preventDefault();
    ask($("question").value);
  });
  $("restart").addEventListener("click", reset);
  for (const name of ["pointerdown", "keydown", "input", "touchstart", "wheel"]) {
    document.addEventListener(name, armIdleTimers, { passive: true, capture: true });
  }
  armIdleTimers();
  document.body.classList.add("ready");
}

main();
