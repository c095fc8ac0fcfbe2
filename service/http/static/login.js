// The key form: translated text, and the "wrong key" notice the server flags on <body data-login>.
import { loadI18n, setupLangSwitch } from "./common.js";

async function main() {
  await loadI18n();
  setupLangSwitch(document.getElementById("lang"));
  document.getElementById("wrong").hidden = document.body.dataset.login !== "wrong";
  document.body.classList.add("ready");
}

main();
