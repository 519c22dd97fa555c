// One item in a dialog: an image at full size, a PDF page with the item's box drawn over it, or a whole
// text chunk; with where it comes from.
import { getJson, pageOf, picture } from "./api.js";
import { $, clear, fileName, h } from "./dom.js";

let pageUrl = null;

export function installViewer() {
  const dialog = $("#viewer");
  $("#viewer-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close(); // a click on the backdrop
  });
  dialog.addEventListener("close", () => {
    if (pageUrl) URL.revokeObjectURL(pageUrl);
    pageUrl = null;
    clear($("#viewer-body"));
  });
}

/** `item`: a query hit or an answer's source (item_id, path, page, modality). */
export async function openItem(item) {
  const dialog = $("#viewer");
  const body = clear($("#viewer-body"));
  const name = fileName(item.path);
  $("#viewer-title").textContent = item.page ? `${name}, page ${item.page}` : name;
  body.append(h("p", { class: "muted" }, "Loading…"));
  if (!dialog.open) dialog.showModal();
  try {
    const details = await getJson(`/v1/items/${item.item_id}`);
    const parts = [];
    if (details.page) parts.push(await pageFigure(details));
    else if (details.image_url) parts.push(await imageFigure(details));
    if (details.text) {
      const label = details.modality === "text" ? "Text" : "What mmrag read in it (caption and text found in it)";
      parts.push(h("h3", { class: "small muted" }, label), h("pre", { class: "fulltext" }, details.text));
    }
    parts.push(facts(details));
    body.replaceChildren(...parts);
  } catch (error) {
    body.replaceChildren(
      h("p", { class: "state-failed" }, `This item could not be shown: ${error.title || ""} ${error.message}`),
    );
  }
}

async function pageFigure(details) {
  const page = await pageOf(details.item_id);
  pageUrl = page.url;
  const name = fileName(details.path);
  const figure = h(
    "div",
    { class: "figure" },
    h("img", { src: page.url, alt: `Page ${details.page} of ${name}`, id: "viewer-page" }),
  );
  if (page.box && page.width > 0 && page.height > 0) {
    const [x0, y0, x1, y1] = page.box;
    const box = h("div", { class: "box", id: "viewer-box", role: "img", "aria-label": "Where the hit is on the page" });
    box.style.left = `${(100 * x0) / page.width}%`;
    box.style.top = `${(100 * y0) / page.height}%`;
    box.style.width = `${(100 * (x1 - x0)) / page.width}%`;
    box.style.height = `${(100 * (y1 - y0)) / page.height}%`;
    figure.append(box);
  }
  return h(
    "figure",
    { class: "viewer-figure" },
    figure,
    h("figcaption", { class: "muted small" }, `Page ${details.page} of ${name}; the hit is outlined.`),
  );
}

async function imageFigure(details) {
  let url;
  try {
    url = await picture(`${details.image_url}?variant=original`);
  } catch {
    url = await picture(details.image_url); // the original is gone or unreadable: the thumbnail still shows it
  }
  return h("div", { class: "figure" }, h("img", { src: url, alt: `The image ${fileName(details.path)}`, id: "viewer-image" }));
}

function facts(details) {
  const rows = [
    ["Source", details.path],
    ["Kind", details.modality],
    details.page ? ["Page", String(details.page)] : null,
    ["Collection", details.collection],
    ["Item", `${details.item_id} (document ${details.document_id})`],
  ];
  for (const [key, value] of Object.entries(details.document_metadata || {})) rows.push([key, String(value)]);
  return h(
    "dl",
    { class: "facts" },
    rows.filter(Boolean).map(([key, value]) => [h("dt", {}, key), h("dd", {}, value)]),
  );
}
