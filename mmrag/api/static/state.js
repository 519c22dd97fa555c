// What the tabs share: the chosen collection, the sizes of all collections, its indexed documents.
import { getJson, v1 } from "./api.js";

const COLLECTION_NAME = "mmrag.collection";
export const COLLECTION_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export const state = {
  collection: sessionStorage.getItem(COLLECTION_NAME) || "default",
  sizes: new Map(), // name -> {name, documents, items}
  documents: [], // the collection's indexed documents (for the search filter), up to 1000
  connected: false, // /v1 answered: ready, and the key (if any) was accepted
};

const bus = new EventTarget();

export function on(name, listener) {
  bus.addEventListener(name, (event) => listener(event.detail));
}

export function emit(name, detail) {
  bus.dispatchEvent(new CustomEvent(name, { detail }));
}

export function setCollection(name) {
  state.collection = name;
  sessionStorage.setItem(COLLECTION_NAME, name);
  emit("collection", name);
}

/** {documents, items} of the chosen collection; null when nothing was ever indexed into it. */
export function collectionSize(name = state.collection) {
  return state.sizes.get(name) || null;
}

/** True when the chosen collection has nothing to search, asking the server again before saying so (files
 * may have been indexed since, from another tab or the CLI). */
export async function nothingToSearch() {
  if (!state.connected) return false;
  if (collectionSize()?.items) return false;
  try {
    await refreshCollections();
  } catch {
    return false; // let the search itself report what is wrong
  }
  return !collectionSize()?.items;
}

export async function refreshCollections() {
  const body = await getJson("/v1/collections");
  state.sizes = new Map(body.collections.map((c) => [c.name, c]));
  state.connected = true;
  emit("collections", body.collections);
}

export async function refreshDocuments() {
  if (!state.sizes.has(state.collection)) {
    state.documents = [];
  } else {
    const body = await getJson(v1(state.collection, "/documents?status=indexed&limit=1000"));
    state.documents = body.documents;
  }
  emit("documents", state.documents);
}

/** After an upload finished or a document was deleted: sizes, lists and filters follow. */
export async function changed() {
  await refreshCollections();
  await refreshDocuments();
  emit("changed", state.collection);
}
