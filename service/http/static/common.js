// Shared by every tuwen page: translations, building DOM without innerHTML, and the streamed chat call.
//
// Everything the server sends (answers, questions, file names, error messages) is untrusted: it only ever
// reaches the page through textContent or attributes set here, never as markup.

const LANG_KEY = "tuwen.lang";
let catalogue = { default: "zh", messages: { zh: {}, en: {} } };
let lang = "zh";

/** Load /api/i18n, pick the remembered language (unless told not to) and translate the page. */
export async function loadI18n({ useSaved = true } = {}) {
  try {
    const response = await fetch("/api/i18n");
    if (response.ok) catalogue = await response.json();
  } catch {
    // Offline or server restarting: the HTML's own Chinese text stays; better than nothing.
  }
  const saved = useSaved ? localStorage.getItem(LANG_KEY) : null;
  lang = saved && catalogue.messages[saved] ? saved : catalogue.default;
  applyI18n(document);
}

export function currentLang() {
  return lang;
}

export function defaultLang() {
  return catalogue.default;
}

/** The message `code` in the current language with `{name}` placeholders filled from `params`. */
export function t(code, params = {}) {
  const text = catalogue.messages[lang]?.[code] ?? catalogue.messages[catalogue.default]?.[code] ?? code;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
}

/** Translate every element below `root` that names a message in data-i18n(-placeholder|-title|-label). */
export function applyI18n(root) {
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll("[data-i18n-placeholder]")) {
    node.placeholder = t(node.dataset.i18nPlaceholder);
  }
  for (const node of root.querySelectorAll("[data-i18n-title]")) {
    node.title = t(node.dataset.i18nTitle);
    node.setAttribute("aria-label", node.title);
  }
  for (const node of root.querySelectorAll("[data-i18n-label]")) node.setAttribute("aria-label", t(node.dataset.i18nLabel));
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
}

/** Switch language; `remember` keeps the choice for next time (the kiosk does not). */
export function setLang(next, { remember = true } = {}) {
  if (!catalogue.messages[next]) return;
  lang = next;
  if (remember) localStorage.setItem(LANG_KEY, next);
  applyI18n(document);
}

/** Make `button` toggle Chinese/English; it is labelled with the other language's own name. */
export function setupLangSwitch(button, onChange, options = {}) {
  const other = () => (lang === "zh" ? "en" : "zh");
  const label = () => {
    button.textContent = catalogue.messages[other()]?.ui_lang_name ?? other();
  };
  label();
  button.addEventListener("click", () => {
    setLang(other(), options);
    label();
    onChange?.();
  });
  return label;
}

/**
 * Create an element. `props`: class, text (textContent), dataset, on<event> handlers, other attributes.
 * Children are nodes or strings (strings become text nodes, never markup).
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An element whose text is the catalogue message `code`, re-translated when the language changes. */
export function label(tag, code, props = {}) {
  return el(tag, { ...props, dataset: { ...(props.dataset ?? {}), i18n: code }, text: t(code) });
}

/** A button labelled with the catalogue message `code`. */
export function button(code, kind, onclick) {
  return label("button", code, { type: "button", class: kind, onclick });
}

/** Show `message` in the element with id `id` (an error line), or hide it when there is none. */
export function showError(id, message) {
  const node = document.getElementById(id);
  node.textContent = message ?? "";
  node.hidden = !message;
}

/** A random UUID (crypto.randomUUID needs https; a kiosk on the LAN is plain http). */
export function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The text to show for a failed response: the server's bilingual error.message when it sent one. */
export async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body?.error?.message === "string") return body.error.message;
  } catch {
    // not JSON (a proxy's error page): fall through
  }
  return t("ui_error", { reason: `HTTP ${response.status}` });
}

/**
 * The login session's CSRF token, which the server puts on <body data-csrf> of pages opened with a session
 * ("" on kiosk and feed screens that use their own token, and when no key is set).
 */
export function csrfToken() {
  return document.body.dataset.csrf ?? "";
}

const ROLES = ["viewer", "reviewer", "admin"];

/**
 * Whether the page's role (<body data-role>, set by the server) may do what `needed` may. Only for showing
 * and hiding controls: the API checks the role on every call either way.
 */
export function roleAllows(needed) {
  return ROLES.indexOf(document.body.dataset.role ?? "admin") >= ROLES.indexOf(needed);
}

/** `options` for fetch() with X-CSRF-Token added to a state-changing call when the page has a session. */
function withCsrf(options) {
  const method = (options.method ?? "GET").toUpperCase();
  const token = csrfToken();
  if (!token || method === "GET" || method === "HEAD") return options;
  return { ...options, headers: { ...(options.headers ?? {}), "X-CSRF-Token": token } };
}

/** fetch() that throws an Error carrying a displayable message on network failure or a non-2xx answer. */
export async function fetchJson(url, options = {}) {
  let response;
  try {
    response = await fetch(url, withCsrf(options));
  } catch {
    throw new Error(t("ui_error_network"));
  }
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// Photos from phones are often 5–12 MB: shrink big ones before sending so they stay under the server's
// body limit and upload quickly over museum Wi-Fi. The model resizes far below this anyway.
const MAX_EDGE = 2048;
const MAX_BYTES = 3_000_000;

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(t("ui_error_image")));
    reader.readAsDataURL(blob);
  });
}

/** A data URL for the chat API: the file itself, or a JPEG re-encoding when it is large. */
export async function imageDataUrl(file) {
  if (file.size <= MAX_BYTES) return readAsDataUrl(file);
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    return readAsDataUrl(file); // a format the browser cannot decode (TIFF): let the server try
  }
  const scale = Math.min(1, MAX_EDGE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
  return readAsDataUrl(blob ?? file);
}

/**
 * POST /v1/chat/completions with stream:true and read its server-sent events.
 * Calls onText(fullTextSoFar) as pieces arrive; resolves with the whole answer; throws an Error whose
 * message is ready to show (AbortError passes through when `signal` aborts).
 */
export async function streamChat({ messages, source, conversation, token, signal, onText, onKind }) {
  const headers = {
    "Content-Type": "application/json",
    "X-Tuwen-Source": source,
    "X-Tuwen-Conversation": conversation,
  };
  if (token) headers.Authorization = `Bearer ${token}`;
  else if (csrfToken()) headers["X-CSRF-Token"] = csrfToken();
  let response;
  try {
    response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers,
      body: JSON.stringify({ model: "tuwen", stream: true, messages }),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error(t("ui_error_network"));
  }
  if (!response.ok) throw new Error(await errorText(response));

  let text = "";
  let done = false;
  const handle = (data) => {
    if (data === "[DONE]") {
      done = true;
      return;
    }
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      return; // not ours to understand; the stream goes on
    }
    if (chunk.error) throw new Error(String(chunk.error.message ?? t("ui_error_interrupted")));
    if (typeof chunk.answer_kind === "string") onKind?.(chunk.answer_kind);
    const piece = chunk.choices?.[0]?.delta?.content;
    if (typeof piece === "string" && piece) {
      text += piece;
      onText?.(text);
    }
  };
  await readEvents(response.body, handle, signal);
  if (!done) throw new Error(t("ui_error_interrupted"));
  return text;
}

/** Parse a text/event-stream body, calling onData(data) for each event (data lines joined by \n). */
async function readEvents(body, onData, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (signal?.aborted) throw err;
        throw new Error(t("ui_error_interrupted"));
      }
      if (chunk.done) break;
      buffer += chunk.value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // an incomplete last line waits for the next chunk
      for (const line of lines) {
        if (line === "") {
          if (data.length) onData(data.join("\n"));
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        }
      }
    }
    if (data.length) onData(data.join("\n"));
  } catch (err) {
    reader.cancel().catch(() => {}); // close the connection rather than leave the answer running
    throw err;
  }
}

/** The page's token from ?token= (kiosk and feed screens), or "" when none. */
export function urlToken() {
  return new URLSearchParams(location.search).get("token") ?? "";
}

/** A short label for a job's source ("文件夹", "展台", …), falling back to the raw name. */
export function sourceLabel(source) {
  const code = `ui_source_${source}`;
  const text = t(code);
  return text === code ? source : text;
}

/** Local date and time of an ISO timestamp, in the page's language. */
export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(lang === "zh" ? "zh-CN" : "en-GB", { dateStyle: "medium", timeStyle: "short" });
}

/** A job's thumbnail (history, review); a dash when the image is gone. */
export function thumbnail(job) {
  const src = `/api/jobs/${Number(job.id)}/thumbnail`;
  const img = el("img", { class: "thumb", alt: "", loading: "lazy", src });
  img.addEventListener("error", () => img.replaceWith(el("span", { class: "thumb missing", text: "—" })));
  return img;
}

/** The badge of a job's review status (未审核 / 正确 / 已更正). */
export function reviewBadge(job) {
  const status = job.review_status ?? "unreviewed";
  return label("span", `ui_review_${status}`, { class: `badge review-${status}` });
}

/** 「需核对」 when the reader flagged low-confidence lines; the notes (rotation, text layer…) as its tooltip. */
export function reviewFlag(job) {
  if (!job.needs_review) return null;
  const badge = el("span", { class: "badge needs-review", text: t("ui_badge_needs_review") });
  badge.title = [t("ui_badge_needs_review_hint"), ...(job.notes ?? [])].join("\n");
  return badge;
}

/** The small 「仅文字识别」 badge for an answer that is OCR text, not a model's answer (else null). */
export function kindBadge(kind) {
  if (kind !== "ocr") return null;
  const badge = el("span", { class: "badge ocr", text: t("ui_badge_ocr") });
  badge.title = t("ui_badge_ocr_hint");
  return badge;
}
