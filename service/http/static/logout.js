// "Log out?" at GET /logout: a GET never ends a session, so the button POSTs with the session's CSRF token
// (from <body data-csrf>).
import { csrfToken, loadI18n, setupLangSwitch } from "./common.js";

async function main() {
  await loadI18n();
  setupLangSwitch(document.getElementById("lang"));
  document.getElementById("csrf").value = csrfToken();
  document.body.classList.add("ready");
}

main();
