"""The benchmark's figure: query latency, query throughput and index build time against collection size,
and ingest throughput of each pipeline next to its floor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_LAYOUT_COLOURS = {"flat": "tab:blue", "ivf": "tab:orange"}


def _layout_family(layout: str) -> str:
    return "ivf" if layout.startswith("ivf") else "flat"


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Write a 2x2 PNG of `results` (bench.run's JSON) to `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    rows = [row for row in results.get("query", []) if "skipped" not in row]
    figure, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    latency, throughput, build, ingest = axes.ravel()

    for family, colour in _LAYOUT_COLOURS.items():
        mine = sorted((r for r in rows if _layout_family(r["layout"]) == family), key=lambda r: r["items"])
        if not mine:
            continue
        sizes = [r["items"] for r in mine]
        for part, style in (("full", "-"), ("floor", "--")):
            latency.plot(
                sizes,
                [r[part]["p50_ms"] for r in mine],
                style,
                marker="o",
                color=colour,
                label=f"{family} {part} p50",
            )
            latency.plot(
                sizes,
                [r[part]["p99_ms"] for r in mine],
                style,
                marker="^",
                color=colour,
                alpha=0.45,
                label=f"{family} {part} p99",
            )
            throughput.plot(
                sizes,
                [r[part]["qps"] for r in mine],
                style,
                marker="o",
                color=colour,
                label=f"{family} {part}",
            )
        if all("faiss_search" in r for r in mine):  # the part of the floor that grows with the collection
            searches = [r["faiss_search"]["p50_ms"] for r in mine]
            latency.plot(sizes, searches, ":", marker="s", color=colour, label=f"{family} FAISS alone p50")
        build.plot(sizes, [r["build_s"] for r in mine], "-", marker="o", color=colour, label=family)
        for r in mine:
            build.annotate(
                f"{r['index_file_bytes_per_item']:.0f} B/item",
                (r["items"], r["build_s"]),
                textcoords="offset points",
                xytext=(4, -12),
                fontsize=8,
                color=colour,
            )

    latency.set(
        xscale="log",
        yscale="log",
        xlabel="items in the collection",
        ylabel="ms per query",
        title="Query latency: full search (solid) vs floor = encode + FAISS (dashed)",
    )
    throughput.set(
        xscale="log",
        yscale="log",
        xlabel="items in the collection",
        ylabel="queries / s (one at a time)",
        title="Query throughput",
    )
    build.set(
        xscale="log",
        yscale="log",
        xlabel="items in the collection",
        ylabel="seconds",
        title="Index build (VectorIndex.rebuild) and index file size per item",
    )
    for axis in (latency, throughput, build):
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)

    _plot_ingest(ingest, results.get("ingest", {}))
    machine = results.get("machine", {})
    figure.suptitle(
        f"mmrag bench: {machine.get('cpu', '?')}, {machine.get('logical_cpus', '?')} CPUs"
        + (f", {machine['gpu']}" if machine.get("gpu") else ", no GPU")
        + f" ({results.get('finished', '')[:16]})",
        fontsize=12,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _plot_ingest(axis: Any, ingest: dict[str, Any]) -> None:
    """Horizontal bars, one group per ingest step: every layer's rate, each in its own unit per second."""
    labels: list[str] = []
    values: list[float] = []
    colours: list[str] = []
    palette = {
        "pipeline": "tab:green",
        "embedder": "tab:olive",
        "extract_pdf": "tab:olive",
        "embed_only": "tab:cyan",
        "bare_forward": "tab:gray",
        "bare_pymupdf": "tab:gray",
    }
    for step, result in ingest.items():
        if not isinstance(result, dict) or "skipped" in result:
            continue
        rates = result[f"{result['unit']}_per_s"]
        for layer, rate in rates.items():
            labels.append(f"{step}: {layer}")
            values.append(rate)
            colours.append(palette.get(layer, "tab:purple"))
    if not values:
        axis.text(0.5, 0.5, "no ingest step in this run", ha="center", va="center")
        axis.set_axis_off()
        return
    positions = list(range(len(values)))[::-1]
    axis.barh(positions, values, color=colours)
    axis.set_yticks(positions, labels, fontsize=8)
    axis.set_xscale("log")
    axis.set_xlim(right=max(values) * 6)  # room for the value labels
    for y, value in zip(positions, values, strict=True):
        axis.annotate(f"{value:,.1f}/s", (value, y), textcoords="offset points", xytext=(3, -3), fontsize=8)
    axis.set(
        xlabel="items / s (images or pages; log scale)",
        title="Ingest throughput: pipeline vs its floor (grey)",
    )
    axis.grid(True, axis="x", which="both", alpha=0.3)


if __name__ == "__main__":  # redraw a saved run: python -m bench.plot bench/results/results.json
    import json
    import sys

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "results.json"
    print(plot_results(json.loads(source.read_text()), source.with_name("bench.png")))
