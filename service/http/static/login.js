// The key form: translated text, and the notice the server flags on <body data-login>: a wrong key, or too
// many wrong tries (data-retry = seconds until the next try is allowed).
import { loadI18n, setupLangSwitch, t } from "./common.js";

function showNotice() {
  const { login, retry } = document.body.dataset;
  document.getElementById("wrong").hidden = login !== "wrong";
  const throttled = document.getElementById("throttled");
  throttled.hidden = login !== "throttled";
  throttled.textContent = t("ui_login_throttled", { seconds: Number(retry) || 60 });
}

async function main() {
  await loadI18n();
  setupLangSwitch(document.getElementById("lang"), showNotice);
  showNotice();
  document.body.classList.add("ready");
}

main();
