// Messages in words (an alert for what went wrong, a status line for what is going on), tabs, confirmation.
import { ApiError } from "./api.js";
import { h, $ } from "./dom.js";

const TABS = ["search", "ask", "library"];

export function showError(error, doing = "") {
  if (error?.name === "AbortError") return;
  const alert = $("#alert");
  const title = error instanceof ApiError ? error.title : "Something went wrong in the page.";
  const message = error?.message || String(error);
  $("#alert-title").textContent = doing ? `${doing}: ${title}` : title;
  $("#alert-message").textContent = message;
  alert.dataset.kind = "error";
  alert.hidden = false;
  if (!(error instanceof ApiError)) console.error(error);
}

export function showInfo(title, message = "") {
  const alert = $("#alert");
  $("#alert-title").textContent = title;
  $("#alert-message").textContent = message;
  alert.dataset.kind = "info";
  alert.hidden = false;
}

export function clearAlert() {
  $("#alert").hidden = true;
}

export function setStatus(text) {
  $("#status").textContent = text || "";
}

export function selectTab(name, focus = false) {
  if (!TABS.includes(name)) name = "search";
  for (const tab of TABS) {
    const button = $(`#tab-${tab}`);
    const selected = tab === name;
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    $(`#panel-${tab}`).hidden = !selected;
    if (selected && focus) button.focus();
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

export function installTabs() {
  for (const tab of TABS) {
    const button = $(`#tab-${tab}`);
    button.addEventListener("click", () => {
      setStatus(""); // the last action's news belongs to the tab it happened in
      selectTab(tab);
    });
    button.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      let next = null;
      if (step) next = TABS[(TABS.indexOf(tab) + step + TABS.length) % TABS.length];
      if (event.key === "Home") next = TABS[0];
      if (event.key === "End") next = TABS[TABS.length - 1];
      if (next) {
        event.preventDefault();
        selectTab(next, true);
      }
    });
  }
  window.addEventListener("hashchange", () => selectTab(location.hash.slice(1)));
  selectTab(location.hash.slice(1));
}

/** "Nothing is indexed in X yet", with a way to the Library. */
export function nothingIndexed(collection) {
  return [
    `Nothing is indexed in collection “${collection}” yet. `,
    h("button", { type: "button", class: "secondary small", onclick: () => selectTab("library", true) },
      "Add files in the Library"),
  ];
}

export function confirm(title, message, yes = "Delete") {
  const dialog = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-message").textContent = message;
  $("#confirm-yes").textContent = yes;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
  });
}

export function installConfirm() {
  const dialog = $("#confirm-dialog");
  dialog.querySelector("form").addEventListener("submit", (event) => {
    event.preventDefault();
    dialog.close(event.submitter?.value || "no");
  });
}
