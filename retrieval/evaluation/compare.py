"""Several encoders side by side on the user's own data: the figures, speed and what a library would cost.

One row per encoder: its figures (Recall@K both ways, or zero-shot top-1/top-5), how fast it
encoded photos here, its embedding size, and the disk 1M photos would take with it: the catalog's
float16 vectors plus the search index photodex would build for 1M vectors of that size
(:func:`retrieval.index.choice.choose_index_spec`, sized by its own estimate).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from indexer.core.errors import InputError
from indexer.core.vectors import VECTOR_DTYPE

__all__ = ["RETRIEVAL_COLUMNS", "ZEROSHOT_COLUMNS", "comparison_row", "disk_per_million", "format_table",
           "plot_comparison"]

MILLION = 1_000_000
RETRIEVAL_COLUMNS = (("text->image R@1", "image_retrieval_recall@1"), ("R@5", "image_retrieval_recall@5"),
                     ("R@10", "image_retrieval_recall@10"), ("image->text R@1", "text_retrieval_recall@1"),
                     ("R@5", "text_retrieval_recall@5"), ("R@10", "text_retrieval_recall@10"))
ZEROSHOT_COLUMNS = (("top-1", "acc1"), ("top-5", "acc5"), ("mean per-class recall", "mean_per_class_recall"))


def disk_per_million(dim: int) -> int:
    """Bytes for 1M photos: float16 vectors in the catalog + the index photodex chooses at that size."""
    from retrieval.index.choice import choose_index_spec, estimate_memory_bytes

    import numpy as np

    vectors = MILLION * dim * np.dtype(VECTOR_DTYPE).itemsize
    return int(vectors + estimate_memory_bytes(choose_index_spec(MILLION, dim), MILLION, dim))


def comparison_row(label: str, metrics: dict[str, float | None], embed_dim: int,
                   photos_per_second: float | None) -> dict[str, Any]:
    """One encoder's row (``metrics`` keyed as clip_benchmark names them)."""
    return {"model": label, "metrics": metrics, "embed_dim": embed_dim,
            "photos_per_second": photos_per_second, "disk_per_1m_photos_bytes": disk_per_million(embed_dim)}


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain text table, one line per encoder."""
    head = ["model", *[c for c, _ in columns], "photos/s", "dim", "disk/1M photos"]
    body = [[r["model"], *[_cell(r["metrics"].get(key)) for _, key in columns],
             "cached" if r["photos_per_second"] is None else f"{r['photos_per_second']:.1f}",
             str(r["embed_dim"]), f"{r['disk_per_1m_photos_bytes'] / 1e9:.2f} GB"] for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    fmt = lambda line: "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)  # noqa: E731
                                 for i, (cell, w) in enumerate(zip(line, widths)))
    lines = [fmt(head), *map(fmt, body)]
    if any(r["photos_per_second"] is None for r in rows):
        lines.append("cached: every image came from the vector cache, so there is no speed to show (--no-cache times it)")
    return "\n".join(lines)


def plot_comparison(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], path: str | Path,
                    title: str) -> None:
    """A grouped bar chart (one group per figure, one bar per encoder) saved as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InputError("--plot needs matplotlib (pip install matplotlib)") from exc
    import numpy as np

    names = [_full(columns, i) for i in range(len(columns))]
    x = np.arange(len(columns))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(columns) * max(1, len(rows)) ** 0.5), 4.0))
    try:
        for j, r in enumerate(rows):
            vals = [r["metrics"].get(key) for _, key in columns]
            ax.bar(x + (j - (len(rows) - 1) / 2) * width, [0.0 if v is None else v for v in vals], width,
                   label=r["model"])
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction")
        ax.set_title(title)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(str(path), format="png", dpi=100)
    finally:
        plt.close(fig)


def _full(columns: Sequence[tuple[str, str]], i: int) -> str:
    """Column titles with their direction spelled out (a table may shorten repeats to "R@5")."""
    return columns[i][1].replace("image_retrieval_recall@", "text->image R@").replace(
        "text_retrieval_recall@", "image->text R@").replace("acc1", "top-1").replace("acc5", "top-5").replace(
        "mean_per_class_recall", "mean per-class recall")
