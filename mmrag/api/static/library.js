// Library: add files and folders (drag and drop or pickers), follow each file through its upload and its
// ingest job, list and delete documents.
import { ApiError, call, forgetPictures, getJson, upload, v1 } from "./api.js";
import { $, bytes, clear, h } from "./dom.js";
import { changed, collectionSize, on, state } from "./state.js";
import { confirm, setStatus, showError } from "./ui.js";

// What the server indexes (it types files by content; text files also need one of these names).
const INDEXED = /\.(jpe?g|png|webp|gif|bmp|tiff?|pdf|txt|md|markdown|rst)$/i;
const UNSUPPORTED = "skipped: not an image, a PDF or a text file (.txt, .md, .markdown, .rst)";
// One request stays well under the server's default limits (32 files, 100 MB per request).
const BATCH_FILES = 16;
const BATCH_BYTES = 32 * 1024 * 1024;
const POLL_MS = 700;
const OUTCOMES = ["indexed", "unchanged", "failed", "skipped", "refused"]; // the final ones, in this order
const PAGE = 100;

let shown = 0; // documents listed so far

export function installLibrary() {
  const drop = $("#library-drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    // The entries must be taken now: the drop's data is gone once this handler returns.
    const entries = [...event.dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
    const files = [...event.dataTransfer.files];
    (entries.length ? walk(entries) : Promise.resolve(files.map((file) => ({ file, path: file.name }))))
      .then(add)
      .catch((error) => showError(error, "Reading the dropped files"));
  });
  for (const id of ["#library-files", "#library-folder"]) {
    const input = $(id);
    input.addEventListener("change", () => {
      add([...input.files].map((file) => ({ file, path: file.webkitRelativePath || file.name })));
      input.value = "";
    });
  }
  $("#documents-more").addEventListener("click", () => listDocuments(false));
  on("documents", () => listDocuments(true)); // the start, a new collection, an upload or delete done
}

async function walk(entries) {
  const found = [];
  async function visit(entry) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      found.push({ file, path: entry.fullPath.replace(/^\//, "") });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await visit(child);
      }
    }
  }
  for (const entry of entries) await visit(entry);
  return found;
}

// ---- one drop or pick: rows per file, batches of uploads, one job per batch ------------------------------------

function add(picked) {
  if (!picked.length) return;
  const collection = state.collection;
  const rows = picked.map((entry) => {
    const state_ = h("span", { class: "state" }, "waiting");
    const li = h("li", { dataset: { path: entry.path } }, h("span", { class: "name" }, entry.path), state_);
    return { ...entry, li, state: state_, outcome: null };
  });
  const progress = h("progress", { max: "1", value: "0", "aria-label": "Upload progress" });
  const summary = h("p", { class: "muted small" });
  const block = h(
    "section",
    { class: "batch", "aria-label": `Adding ${rows.length} files` },
    h("h3", {}, `Adding ${rows.length} file${rows.length === 1 ? "" : "s"} to “${collection}”`),
    progress,
    summary,
    h("ul", {}, rows.map((row) => row.li)),
  );
  $("#uploads").prepend(block);

  const accepted = [];
  for (const row of rows) {
    const hidden = row.path.split("/").some((part) => part.startsWith("."));
    if (hidden) mark(row, "skipped", "skipped: a hidden file");
    else if (!INDEXED.test(row.file.name) && !row.file.type.startsWith("image/")) mark(row, "skipped", UNSUPPORTED);
    else accepted.push(row);
  }
  run(collection, accepted, progress).then(() => {
    const counts = {};
    for (const row of rows) counts[row.outcome] = (counts[row.outcome] || 0) + 1;
    summary.textContent = OUTCOMES.filter((outcome) => counts[outcome])
      .map((outcome) => `${counts[outcome]} ${outcome}`)
      .join(", ");
    progress.value = 1;
    block.dataset.done = "true";
    setStatus(`Done adding files to “${collection}”: ${summary.textContent}.`);
    return changed();
  }).catch((error) => showError(error, "Adding files"));
}

function mark(row, outcome, text) {
  row.outcome = outcome;
  row.state.textContent = text;
  row.state.className = `state state-${outcome}`;
  row.li.dataset.outcome = outcome;
}

function batches(rows) {
  const out = [];
  let current = [];
  let size = 0;
  for (const row of rows) {
    if (current.length && (current.length >= BATCH_FILES || size + row.file.size > BATCH_BYTES)) {
      out.push(current);
      current = [];
      size = 0;
    }
    current.push(row);
    size += row.file.size;
  }
  if (current.length) out.push(current);
  return out;
}

async function run(collection, rows, progress) {
  const total = rows.reduce((sum, row) => sum + row.file.size, 0) || 1;
  let sent = 0;
  const jobs = [];
  const queue = batches(rows);
  while (queue.length) {
    const batch = queue.shift();
    const size = batch.reduce((sum, row) => sum + row.file.size, 0);
    for (const row of batch) mark(row, "uploading", "uploading…");
    try {
      const job = await upload(collection, batch, (fraction) => {
        progress.value = (sent + fraction * size) / total;
      });
      for (const row of batch) mark(row, "queued", "uploaded, waiting to be indexed");
      jobs.push(follow(job, batch));
    } catch (error) {
      if (error instanceof ApiError && [415, 422].includes(error.status) && batch.length > 1) {
        queue.unshift(...batch.map((row) => [row])); // one bad file refuses its request: try each alone
        continue;
      }
      for (const row of batch) mark(row, "refused", `refused: ${error.message}`);
      if (error.status === 0 || error.status === 401 || error.status === 413 || error.status >= 500) {
        showError(error, "Upload");
      }
    }
    sent += size;
    progress.value = sent / total;
  }
  await Promise.all(jobs);
}

/** Polls the job until it ends; each file's row shows its outcome as soon as the job reports it. */
async function follow(accepted, rows) {
  const byName = new Map();
  accepted.files.forEach((file, i) => {
    if (!byName.has(file.name)) byName.set(file.name, []);
    byName.get(file.name).push(rows[i]);
  });
  for (;;) {
    let job;
    try {
      job = await getJson(accepted.status_url);
    } catch (error) {
      for (const row of rows) if (!isFinal(row)) mark(row, "failed", `failed: lost track of the job (${error.message})`);
      return;
    }
    const taken = new Map();
    for (const file of job.files) {
      const candidates = byName.get(file.name) || [];
      const index = taken.get(file.name) || 0;
      taken.set(file.name, index + 1);
      const row = candidates[index];
      if (row) mark(row, outcomeOf(file), describe(file));
    }
    if (job.status === "done" || job.status === "failed") {
      for (const row of rows) {
        if (isFinal(row)) continue;
        mark(row, "failed", job.error ? `failed: ${job.error}` : "failed: the job did not report this file");
      }
      return;
    }
    if (job.status === "running") {
      for (const row of rows) if (row.outcome === "queued") mark(row, "indexing", "indexing…");
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function isFinal(row) {
  return OUTCOMES.includes(row.outcome);
}

function outcomeOf(file) {
  if (file.status === "unsupported") return "skipped";
  return file.status === "indexed" || file.status === "unchanged" ? file.status : "failed";
}

function describe(file) {
  switch (file.status) {
    case "indexed":
      return `indexed: ${file.items} item${file.items === 1 ? "" : "s"}`;
    case "unchanged":
      return "already indexed (unchanged)";
    case "unsupported":
      return `skipped: ${file.reason || "not a supported file"}`;
    default:
      return `failed: ${file.reason || file.status}`;
  }
}

// ---- the documents of the collection ---------------------------------------------------------------------

async function listDocuments(reset) {
  const body = $("#documents tbody");
  const empty = $("#documents-empty");
  const more = $("#documents-more");
  if (reset) {
    shown = 0;
    clear(body);
  }
  if (!state.connected) return;
  if (!collectionSize()) {
    $("#documents-total").textContent = "";
    empty.hidden = false;
    empty.textContent = `Nothing is indexed in collection “${state.collection}” yet: drop files above.`;
    more.hidden = true;
    return;
  }
  try {
    const page = await getJson(v1(state.collection, `/documents?offset=${shown}&limit=${PAGE}`));
    body.append(...page.documents.map(documentRow));
    shown += page.documents.length;
    $("#documents-total").textContent = `(${page.total})`;
    empty.hidden = page.total > 0;
    empty.textContent = page.total ? "" : `Collection “${state.collection}” has no documents: drop files above.`;
    more.hidden = shown >= page.total;
  } catch (error) {
    showError(error, "Listing documents");
  }
}

function documentRow(doc) {
  const added = doc.created_at ? new Date(doc.created_at).toLocaleString() : "";
  return h(
    "tr",
    { dataset: { document: doc.id, name: doc.name } },
    h("td", { class: "name", title: doc.path }, doc.name),
    h("td", {}, doc.kind),
    h("td", {}, doc.status, doc.error ? h("span", { class: "error" }, doc.error) : null),
    h("td", { class: "num" }, String(doc.items)),
    h("td", { class: "num" }, bytes(doc.size)),
    h("td", {}, added),
    h(
      "td",
      {},
      h("button", { type: "button", class: "secondary small", "aria-label": `Delete ${doc.name}`, onclick: () => remove(doc) }, "Delete"),
    ),
  );
}

async function remove(doc) {
  const sure = await confirm(
    `Delete ${doc.name}?`,
    `Its ${doc.items} item${doc.items === 1 ? "" : "s"} leave the index of “${doc.collection}”. ` +
      "A file uploaded here is removed from the server too; a file indexed from a folder is left alone.",
  );
  if (!sure) return;
  try {
    await call(v1(doc.collection, `/documents/${doc.id}`), { method: "DELETE" });
    forgetPictures();
    setStatus(`Deleted ${doc.name}.`);
    await changed();
  } catch (error) {
    showError(error, `Deleting ${doc.name}`);
  }
}
