// Ask: the answer streams in (server-sent events), then is shown sentence by sentence with the sources each
// sentence cites beside it: the cited pictures themselves, or a quote of the cited text.
import { call, events, getJson, picture, v1 } from "./api.js";
import { $, clear, fileName, h, imageDrop, shorten } from "./dom.js";
import { nothingToSearch, on, state } from "./state.js";
import { clearAlert, nothingIndexed, showError } from "./ui.js";
import { openItem } from "./viewer.js";

let image;
let running = null;
const texts = new Map(); // item id -> Promise of its text, for quotes of cited text sources

export function installAsk() {
  image = imageDrop($("#ask-drop"));
  $("#ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    ask();
  });
  $("#ask-question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("#ask-form").requestSubmit();
    }
  });
  on("collection", () => {
    running?.abort();
    $("#ask-output").hidden = true;
  });
}

function setState(text) {
  $("#ask-state").textContent = text;
}

function reset() {
  clear($("#answer"));
  clear($("#answer-notes"));
  clear($("#sources"));
  $("#sources-title").hidden = true;
  $("#left-out").hidden = true;
  $("#ask-output").hidden = false;
}

async function ask() {
  const question = $("#ask-question").value.trim();
  const file = image.get();
  if (!question) {
    $("#ask-output").hidden = false;
    setState("Type a question first.");
    $("#ask-question").focus();
    return;
  }
  reset();
  if (await nothingToSearch()) {
    $("#ask-state").replaceChildren(...nothingIndexed(state.collection));
    return;
  }
  running?.abort();
  running = new AbortController();
  const k = Number($("#ask-k").value);
  const button = $("#ask-submit");
  button.disabled = true;
  setState("Finding sources…");
  try {
    const path = v1(state.collection, "/ask");
    let response;
    if (file) {
      const form = new FormData();
      form.append("question", question);
      form.append("k", String(k));
      form.append("stream", "true");
      form.append("image", file, file.name);
      response = await call(path, { method: "POST", form, signal: running.signal });
    } else {
      response = await call(path, { method: "POST", json: { question, k, stream: true }, signal: running.signal });
    }
    clearAlert();
    if (!(response.headers.get("content-type") || "").startsWith("text/event-stream")) {
      showAnswer(await response.json());
      return;
    }
    await follow(response);
  } catch (error) {
    if (error.name === "AbortError") return;
    setState("");
    showError(error, "Ask");
  } finally {
    button.disabled = false;
  }
}

async function follow(response) {
  const streaming = h("p", { class: "streaming" }, "…");
  let text = "";
  let finished = false;
  for await (const { name, data } of events(response)) {
    if (name === "sources") {
      showRetrieved(data);
      setState(
        `Writing an answer from what was found… (a local model on a CPU can take a minute; the first answer ` +
          `also loads the model)`,
      );
      $("#answer").replaceChildren(streaming);
    } else if (name === "token") {
      text += data.text;
      streaming.textContent = text;
    } else if (name === "done") {
      finished = true;
      showAnswer(data);
    } else if (name === "error") {
      finished = true;
      noAnswer(data.message || "answer generation failed", []);
    }
  }
  if (!finished) noAnswer("the answer stream ended before the answer was complete", []);
}

function showRetrieved(sources) {
  $("#sources-title").hidden = false;
  $("#sources-title").textContent = `Found ${sources.length} source${sources.length === 1 ? "" : "s"}`;
  $("#sources").replaceChildren(...sources.map((source) => sourceRow(source)));
}

function showAnswer(body) {
  setState(`Answered in ${(body.took_ms / 1000).toFixed(1)} s by ${body.backend}.`);
  const byNumber = new Map(body.sources.filter((s) => s.number !== null).map((s) => [s.number, s]));
  if (body.answer === null) {
    noAnswer(body.error || "no answer was generated", [...body.sources, ...body.left_out]);
    return;
  }
  $("#answer").replaceChildren(...claims(body.answer).map((sentence) => claim(sentence, byNumber)));
  const notes = [];
  if (!body.cited.length) {
    notes.push(h("li", { class: "none" }, "This answer cites no source: nothing in it is backed by your files."));
  } else if (body.citations_added) {
    notes.push(
      h("li", {}, "The model cited nothing itself; mmrag matched each sentence to the source that shares most of its words."),
    );
  }
  for (const warning of body.warnings) {
    if (/cited no source|cites no source/.test(warning)) continue; // said above, in words
    notes.push(h("li", {}, warning));
  }
  $("#answer-notes").replaceChildren(...notes);
  $("#sources-title").hidden = !body.sources.length;
  $("#sources-title").textContent = "Sources";
  $("#sources").replaceChildren(...body.sources.map((source) => sourceRow(source)));
  showLeftOut(body.left_out);
}

function noAnswer(reason, retrieved) {
  const off = /generation is off/.test(reason);
  $("#answer").replaceChildren(
    h(
      "p",
      { class: "state-failed" },
      h("strong", {}, off ? "This server does not write answers. " : "No answer was written. "),
      off ? "It has answer generation off; here is what it found." : `The answer model failed or could not be reached: ${reason}`,
    ),
  );
  setState("");
  if (retrieved.length) {
    $("#sources-title").hidden = false;
    $("#sources-title").textContent = `Found ${retrieved.length} source${retrieved.length === 1 ? "" : "s"}`;
    $("#sources").replaceChildren(...retrieved.map((source) => sourceRow(source)));
  }
}

/** Sentences (and lines); a citation that trails after a full stop stays with its sentence. */
export function claims(text) {
  const pieces = text.split(/(?<=[.!?])\s+|\n+/).map((s) => s.trim()).filter(Boolean);
  const out = [];
  for (const piece of pieces) {
    if (/^(\[\d+\]\s*)+[.!?]?$/.test(piece) && out.length) out[out.length - 1] += ` ${piece}`;
    else out.push(piece);
  }
  return out;
}

function claim(sentence, byNumber) {
  const paragraph = h("p");
  const cited = [];
  let last = 0;
  for (const match of sentence.matchAll(/\[(\d+)\]/g)) {
    paragraph.append(sentence.slice(last, match.index));
    const number = Number(match[1]);
    const source = byNumber.get(number);
    if (source) {
      paragraph.append(
        h(
          "a",
          {
            href: `#source-${number}`,
            class: "cite",
            "aria-label": `source ${number}, ${fileName(source.path)}`,
            onclick: (event) => {
              event.preventDefault(); // the address keeps naming the tab, not the source
              flash(number);
            },
          },
          `[${number}]`,
        ),
      );
      if (!cited.includes(number)) cited.push(number);
    } else {
      paragraph.append(match[0]);
    }
    last = match.index + match[0].length;
  }
  paragraph.append(sentence.slice(last));
  const evidence = h("div", { class: "evidence" }, cited.map((number) => evidenceOf(byNumber.get(number))));
  return h("div", { class: "claim" }, paragraph, cited.length ? evidence : null);
}

function flash(number) {
  const row = document.getElementById(`source-${number}`);
  if (!row) return;
  row.scrollIntoView({ behavior: "smooth", block: "center" });
  row.classList.add("flash");
  row.querySelector("button")?.focus({ preventScroll: true });
  setTimeout(() => row.classList.remove("flash"), 1600);
}

function where(source) {
  return `${fileName(source.path)}${source.page ? `, page ${source.page}` : ""}`;
}

function evidenceOf(source) {
  const label = `[${source.number}] ${where(source)}`;
  if (source.image_url) {
    const img = h("img", { alt: `Source ${label}` });
    picture(source.image_url).then((url) => {
      img.src = url;
    }, () => {});
    return h(
      "figure",
      { class: "cited-image" },
      h("button", { type: "button", onclick: () => openItem(source), "aria-label": `Open source ${label}` }, img),
      h("figcaption", {}, label),
    );
  }
  const quote = h("blockquote", {}, "…");
  textOf(source.item_id).then((text) => {
    quote.textContent = `“${shorten(text, 160)}”`;
  }, () => {});
  return h(
    "figure",
    { class: "cited-text" },
    h("button", { type: "button", class: "link", onclick: () => openItem(source) }, label),
    quote,
  );
}

function textOf(itemId) {
  if (!texts.has(itemId)) texts.set(itemId, getJson(`/v1/items/${itemId}`).then((item) => item.text || ""));
  return texts.get(itemId);
}

function sourceRow(source) {
  const mini = h("span", { class: "mini" });
  if (source.image_url) {
    const img = h("img", { alt: "" });
    mini.append(img);
    picture(source.image_url).then((url) => {
      img.src = url;
    }, () => {});
  } else {
    mini.append("text");
  }
  const quote = source.image_url ? null : h("span", { class: "quote" });
  if (quote) {
    textOf(source.item_id).then((text) => {
      quote.textContent = shorten(text, 220);
    }, () => {});
  }
  return h(
    "li",
    { class: "source", id: source.number ? `source-${source.number}` : null, dataset: { item: source.item_id } },
    h("span", { class: "number" }, source.number ? `[${source.number}]` : "·"),
    mini,
    h(
      "span",
      { class: "detail" },
      h("button", { type: "button", class: "link", onclick: () => openItem(source) }, where(source)),
      h(
        "span",
        {},
        h("span", { class: `badge ${source.modality}` }, source.modality),
        " ",
        source.cited ? h("span", { class: "badge cited" }, "cited") : null,
        source.sent_as ? h("span", { class: "muted small" }, ` given to the model as ${source.sent_as}`) : null,
        source.left_out ? h("span", { class: "muted small" }, ` ${source.left_out}`) : null,
      ),
      quote,
    ),
  );
}

function showLeftOut(leftOut) {
  const details = $("#left-out");
  details.hidden = !leftOut.length;
  details.querySelector("summary").textContent = `${leftOut.length} more found but not given to the model`;
  details.querySelector("ul").replaceChildren(...leftOut.map((source) => sourceRow(source)));
}
