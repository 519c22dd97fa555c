// Search: text and/or an image, filters, a grid of hits; a hit opens in the viewer.
import { ApiError, call, picture, v1 } from "./api.js";
import { $, clear, fileName, h, imageDrop, listInWords, shorten } from "./dom.js";
import { nothingToSearch, on, state } from "./state.js";
import { clearAlert, nothingIndexed, showError } from "./ui.js";
import { openItem } from "./viewer.js";

let image;
let running = null;

export function installSearch() {
  image = imageDrop($("#search-drop"));
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  on("documents", fillDocuments);
  on("collection", () => {
    clear($("#search-results"));
    $("#search-summary").textContent = "";
  });
}

function fillDocuments(documents) {
  const select = $("#search-document");
  const current = select.value;
  select.replaceChildren(
    h("option", { value: "" }, "all documents"),
    ...documents.map((doc) => h("option", { value: String(doc.id) }, doc.name)),
  );
  if (documents.some((doc) => String(doc.id) === current)) select.value = current;
}

function filters() {
  const modalities = [...document.querySelectorAll("input[name=modality]:checked")].map((box) => box.value);
  const chosen = {};
  if (modalities.length < 3) chosen.modality = modalities;
  const documentId = $("#search-document").value;
  if (documentId) chosen.document_ids = [Number(documentId)];
  return { chosen, modalities };
}

async function search() {
  const text = $("#search-text").value.trim();
  const file = image.get();
  const summary = $("#search-summary");
  const list = $("#search-results");
  if (!text && !file) {
    summary.textContent = "Type what you are looking for, or drop an image (or both).";
    $("#search-text").focus();
    return;
  }
  if (await nothingToSearch()) {
    clear(list);
    summary.replaceChildren(...nothingIndexed(state.collection));
    return;
  }
  const { chosen, modalities } = filters();
  if (!modalities.length) {
    summary.textContent = "Tick at least one kind of item: images, text or pages.";
    return;
  }
  const k = Number($("#search-k").value);
  running?.abort();
  running = new AbortController();
  const button = $("#search-submit");
  button.disabled = true;
  summary.textContent = "Searching…";
  try {
    const path = v1(state.collection, "/query");
    let response;
    if (file) {
      const form = new FormData();
      if (text) form.append("text", text);
      form.append("k", String(k));
      if (Object.keys(chosen).length) form.append("filters", JSON.stringify(chosen));
      form.append("image", file, file.name);
      response = await call(path, { method: "POST", form, signal: running.signal });
    } else {
      const body = { text, k };
      if (Object.keys(chosen).length) body.filters = chosen;
      response = await call(path, { method: "POST", json: body, signal: running.signal });
    }
    const body = await response.json();
    clearAlert();
    const what = [text && `“${text}”`, file && `the image ${file.name}`].filter(Boolean).join(" and ");
    summary.textContent = body.hits.length
      ? `${body.hits.length} results for ${what} (${Math.round(body.took_ms)} ms). Open one to see it in its source.`
      : `Nothing matched ${what} with these filters.`;
    list.replaceChildren(...body.hits.map(hitCard));
  } catch (error) {
    if (error.name === "AbortError") return;
    summary.textContent = "";
    if (error instanceof ApiError && error.status === 404 && /no collection/.test(error.message)) {
      summary.replaceChildren(...nothingIndexed(state.collection));
    } else {
      showError(error, "Search");
    }
  } finally {
    button.disabled = false;
  }
}

function hitCard(hit) {
  const name = fileName(hit.path);
  const thumb = h("span", { class: "thumb" });
  if (hit.image_url) {
    const img = h("img", { alt: `${hit.modality} from ${name}` });
    thumb.append(img);
    picture(hit.image_url).then(
      (url) => {
        img.src = url;
      },
      () => {
        img.alt = "(the picture could not be loaded)";
      },
    );
  } else {
    thumb.append(h("span", { class: "snippet" }, shorten(hit.text, 420)));
  }
  const lists = Object.entries(hit.ranks)
    .sort((a, b) => a[1] - b[1])
    .map(([key, rank]) =>
      h("span", { title: `${listInWords(key)}: rank ${rank}, cosine ${hit.scores[key]?.toFixed(3)}` }, `${key} #${rank}`),
    );
  const card = h(
    "button",
    { type: "button", class: "hit", dataset: { item: hit.item_id, modality: hit.modality }, onclick: () => openItem(hit) },
    thumb,
    h(
      "span",
      { class: "meta" },
      h("span", { class: `badge ${hit.modality}` }, hit.modality),
      h("span", { class: "file" }, name),
      hit.page ? h("span", { class: "muted" }, `page ${hit.page}`) : null,
    ),
    hit.image_url && hit.text ? h("span", { class: "caption" }, shorten(hit.text, 160)) : null,
    h("span", { class: "found", title: "The lists that found it (space:query>index) and its rank in each" },
      h("span", { class: "visually-hidden" }, "found by"), lists),
  );
  return h("li", {}, card);
}
