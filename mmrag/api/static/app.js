// The page's start: wait for the server, ask for an API key when it wants one, load the collections, wire the
// three tabs (Search, Ask, Library).
import { ApiError, apiKey, forgetPictures, onUnauthorized } from "./api.js";
import { installAsk } from "./ask.js";
import { $, h } from "./dom.js";
import { installLibrary } from "./library.js";
import { installSearch } from "./search.js";
import {
  COLLECTION_PATTERN,
  collectionSize,
  on,
  refreshCollections,
  refreshDocuments,
  setCollection,
  state,
} from "./state.js";
import { clearAlert, installConfirm, installTabs, setStatus, showError } from "./ui.js";
import { installViewer } from "./viewer.js";

const READY_POLL_MS = 2000;

function installKeyDialog() {
  const dialog = $("#key-dialog");
  const input = $("#key-input");
  $("#key-button").addEventListener("click", () => openKeyDialog(""));
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey.set(input.value.trim());
    dialog.close();
    keyChanged();
  });
  $("#key-forget").addEventListener("click", () => {
    apiKey.set("");
    dialog.close();
    keyChanged();
  });
  $("#key-cancel").addEventListener("click", () => dialog.close());
  onUnauthorized((error) => {
    state.connected = false;
    showError(error);
    openKeyDialog(error.title);
  });
  showKeyState();
}

function openKeyDialog(reason) {
  const dialog = $("#key-dialog");
  if (dialog.open) return;
  $("#key-reason").textContent = reason;
  $("#key-input").value = "";
  dialog.showModal();
  $("#key-input").focus();
}

function showKeyState() {
  const button = $("#key-button");
  button.dataset.state = apiKey.get() ? "set" : "unset";
  button.textContent = apiKey.get() ? "API key set" : "API key";
}

function keyChanged() {
  showKeyState();
  forgetPictures();
  clearAlert();
  connect();
}

function installCollectionPicker() {
  const input = $("#collection");
  input.value = state.collection;
  input.addEventListener("change", () => {
    const name = input.value.trim();
    if (!COLLECTION_PATTERN.test(name)) {
      showError(
        new ApiError(422, "invalid_request", "use letters, digits, '_', '.' and '-' (up to 64, starting with a letter or digit)"),
        `“${name}” cannot be a collection name`,
      );
      input.value = state.collection;
      return;
    }
    clearAlert();
    setCollection(name);
    showSize();
    refreshDocuments().catch((error) => showError(error, "Listing documents"));
  });
  on("collections", (collections) => {
    $("#collection-names").replaceChildren(...collections.map((c) => h("option", { value: c.name })));
    showSize();
  });
}

function showSize() {
  const size = collectionSize();
  $("#collection-size").textContent = size
    ? `${size.documents} document${size.documents === 1 ? "" : "s"}, ${size.items} items`
    : "new: nothing indexed yet";
}

async function waitUntilReady() {
  for (;;) {
    let detail;
    try {
      const response = await fetch("/ready", { cache: "no-store" });
      const body = await response.json();
      if (body.ready) {
        setStatus("");
        return;
      }
      detail = body.detail || "loading";
    } catch {
      setStatus("Cannot reach the mmrag server; trying again…");
      await new Promise((resolve) => setTimeout(resolve, READY_POLL_MS));
      continue;
    }
    if (/^loading/.test(detail)) setStatus("The server is loading its models and indexes; this page will be ready in a moment…");
    else showError(new ApiError(503, "not_ready", detail), "The server could not start");
    await new Promise((resolve) => setTimeout(resolve, READY_POLL_MS));
  }
}

async function connect() {
  try {
    await refreshCollections();
    await refreshDocuments();
    document.body.dataset.ready = "true"; // for tests and scripts: the page has its collections
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showError(error, "Loading the collections");
  }
}

installTabs();
installConfirm();
installViewer();
installKeyDialog();
installCollectionPicker();
installSearch();
installAsk();
installLibrary();
waitUntilReady().then(connect);
