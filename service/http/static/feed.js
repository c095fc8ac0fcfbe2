// The hall screen: the newest answered items, arriving live over server-sent events (/api/feed/events).
// No interaction but the language switch (remembered, like the web UI's); it reconnects by itself
// (EventSource) and shows when it is offline.
import {
  applyI18n, el, fetchJson, formatTime, kindBadge, loadI18n, setupLangSwitch, sourceLabel, t, urlToken,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const token = urlToken();
const query = token ? `?token=${encodeURIComponent(token)}` : "";
const FRESH_MS = 20_000;
const RETRY_MS = 10_000;

let limit = 12;
const items = new Map(); // id → item
const cards = new Map(); // id → { node, answer } (kept so images are not reloaded on every update)

function card(item) {
  const img = el("img", { alt: "", loading: "lazy", src: `/api/feed/thumbnail/${Number(item.id)}${query}` });
  img.addEventListener("error", () => img.remove());
  return el(
    "article",
    { class: "feed-card fresh", dataset: { id: String(item.id) } },
    img,
    el(
      "div",
      { class: "body" },
      el(
        "div",
        { class: "meta" },
        el("span", { class: "name", text: item.file_name || sourceLabel(item.source) }),
        el("time", { text: shortTime(item.finished_at || item.created_at) }),
      ),
      el("p", { class: "question", text: item.question ?? "" }, " ", kindBadge(item.answer_kind)),
      el("p", { class: "answer", text: item.answer ?? "" }),
    ),
  );
}

/** Just the time for today's items (a wall screen mostly shows today), the full date otherwise. */
function shortTime(iso) {
  const date = new Date(iso);
  const today = new Date().toDateString();
  if (Number.isNaN(date.getTime()) || date.toDateString() !== today) return formatTime(iso);
  return date.toLocaleTimeString(document.documentElement.lang, { hour: "2-digit", minute: "2-digit" });
}

const newestFirst = (a, b) =>
  String(b.finished_at ?? "").localeCompare(String(a.finished_at ?? "")) || Number(b.id) - Number(a.id);

function render() {
  const shown = [...items.values()].sort(newestFirst).slice(0, limit);
  const keep = new Set(shown.map((item) => item.id));
  for (const id of [...items.keys()]) {
    if (!keep.has(id)) {
      items.delete(id);
      cards.delete(id);
    }
  }
  const nodes = shown.map((item) => {
    let entry = cards.get(item.id);
    if (!entry || entry.answer !== item.answer || entry.question !== item.question) {
      entry = { node: card(item), answer: item.answer, question: item.question };
      cards.set(item.id, entry);
      setTimeout(() => entry.node.classList.remove("fresh"), FRESH_MS);
    }
    return entry.node;
  });
  $("items").replaceChildren(...nodes);
  $("waiting").hidden = nodes.length > 0;
}

/** The status dot: green and "live" while connected; its label says which, in the page's language. */
function showLive(live) {
  $("status").classList.toggle("live", live);
  $("status").dataset.i18nTitle = live ? "ui_feed_live" : "ui_feed_offline";
  applyI18n($("status").parentElement);
  $("offline").hidden = live;
}

/** Rebuild every card in the new language (badges, times), keeping which ones still glow as new. */
function relabel() {
  for (const [id, entry] of cards) {
    const fresh = entry.node.classList.contains("fresh");
    entry.node = card(items.get(id));
    entry.node.classList.toggle("fresh", fresh);
  }
  render();
}

function connect() {
  const source = new EventSource(`/api/feed/events${query}`);
  source.addEventListener("open", () => showLive(true));
  source.addEventListener("error", () => {
    showLive(false);
    // EventSource retries a dropped connection by itself but gives up after an error response (a restart
    // behind a proxy answering 502): a screen on a wall must keep trying.
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, RETRY_MS);
  });
  source.addEventListener("item", (event) => {
    let item;
    try {
      item = JSON.parse(event.data);
    } catch {
      return;
    }
    items.set(item.id, item);
    render();
  });
}

function tickClock() {
  $("clock").textContent = new Date().toLocaleTimeString(document.documentElement.lang, {
    hour: "2-digit",
    minute: "2-digit",
  });
}

async function main() {
  await loadI18n();
  setupLangSwitch($("lang"), () => {
    relabel();
    tickClock();
  });
  try {
    const config = await fetchJson(`/api/config/feed${query}`);
    $("title").textContent = config.title;
    document.title = config.title || document.title;
    limit = config.limit || limit;
  } catch {
    $("title").textContent = t("ui_app_title");
  }
  tickClock();
  setInterval(tickClock, 15_000);
  connect();
  document.body.classList.add("ready");
}

main();
