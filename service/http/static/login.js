// The login form: a name and password (named accounts), or the access key alone as the password. The server
// flags on <body> which ways in exist (data-accounts, data-key: "on"/"off") and the notice to show
// (data-login: a wrong name or password, or too many wrong tries; data-retry = seconds until the next try).
import { loadI18n, setupLangSwitch, t } from "./common.js";

function showWays() {
  const { accounts, key } = document.body.dataset;
  // Without accounts there is only the key: no name to type, and the field is labelled as the key.
  document.getElementById("name-field").hidden = accounts === "off";
  document.getElementById("key-hint").hidden = !(accounts === "on" && key === "on");
  const label = document.getElementById("password-label");
  label.textContent = t(accounts === "off" ? "ui_login_key" : "ui_login_password");
  if (accounts === "off") document.getElementById("password").focus();
}

function showNotice() {
  showWays();
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
