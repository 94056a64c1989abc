"""VisA on the user's disk, read through its split file into the MVTec-like shape.

``visa:PATH/CATEGORY`` names the VisA root (the folder holding ``split_csv/1cls.csv``) and a
category (``candle``, ``pcb1``, ...). The csv has columns ``object,split,label,image,mask`` with
paths relative to the root, e.g. ``candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,
candle/Data/Masks/Anomaly/000.png``. Normal rows get the label ``good``; anomalous rows get
``bad``, the folder name anomalib's VisA conversion uses (VisA's 1-class split has no defect types).
VisA masks store a class index per pixel; any non-zero value is anomalous. Image conversions are those
of :func:`anoplug.types.load_image` (``docs/image_input.md``); an image listed twice for one split (a
repeated row, or two rows reaching one file through a symbolic link) is a ``DataError`` naming the csv
lines. Nothing is downloaded (VisA is CC BY 4.0-NC; nothing of it is in this repository).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from anoplug.data.base import DataError
from anoplug.data.folder import FileDataset, FileRecord
from anoplug.types import GOOD

__all__ = ["VisA", "SPLIT_CSV"]

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")


class VisA(FileDataset):
    """``visa:PATH/CATEGORY`` — VisA through ``split_csv/1cls.csv``; splits ``train`` and ``test``."""

    scheme = "visa"

    def __init__(self, root: str | Path, category: str, split: str = "train", size: int = 256,
                 split_csv: str | Path = SPLIT_CSV) -> None:
        root = Path(root).expanduser()
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r} for visa:{root}/{category}; use 'train' or 'test'")
        table = root / split_csv
        if not table.is_file():
            raise DataError(f"VisA split file {table} not found (visa:PATH/CATEGORY needs PATH/{SPLIT_CSV})")
        rows = self._read_rows(table)
        known = sorted({r["object"] for r in rows})
        if category not in known:
            raise DataError(f"{table} has no category {category!r}; it lists: {', '.join(known)}")
        records, lines = [], {}
        for n, r in rows_of(rows, category, split):
            image = root / r["image"]
            if not image.is_file():
                raise DataError(f"{table} line {n}: image {image} not found")
            first = lines.setdefault(os.path.realpath(image), n)
            if first != n:
                raise DataError(f"{table} lines {first} and {n} both list {image} (the same file) for the {split} "
                                f"split; remove the duplicate row")
            label = r["label"].strip().lower()
            if label == "normal":
                records.append(FileRecord(image, GOOD))
                continue
            if label != "anomaly":
                raise DataError(f"{table} line {n}: label must be 'normal' or 'anomaly', got {r['label']!r}")
            if not r["mask"].strip():
                raise DataError(f"{table} line {n}: anomalous image {image} has no mask")
            mask = root / r["mask"]
            if not mask.is_file():
                raise DataError(f"{table} line {n}: mask {mask} of image {image} not found")
            if mask.stem != image.stem:
                raise DataError(f"{table} line {n}: mask {mask.name} does not match image {image.name}")
            records.append(FileRecord(image, "bad", (mask,)))
        if not records:
            raise DataError(f"{table} lists no {split} images for {category!r}")
        super().__init__(records, category=category, split=split, size=size, root=root)

    @staticmethod
    def _read_rows(table: Path) -> list[dict]:
        try:
            with open(table, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(f"{table} lacks column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
                return [dict(r, _line=i) for i, r in enumerate(reader, 2)]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"cannot read VisA split file {table}: {e}") from e

    @classmethod
    def open(cls, rest: str, *, split: str = "train", size: int = 256, **kw) -> VisA:
        path = Path(rest.rstrip("/"))
        if not path.name or str(path.parent) in ("", "."):
            raise DataError(f"visa:{rest} must name the VisA root and a category: visa:PATH/CATEGORY")
        return cls(path.parent, path.name, split=split, size=size, **kw)


def rows_of(rows: list[dict], category: str, split: str):
    """(csv line number, row) of one category and split."""
    for r in rows:
        if r["object"] == category and r["split"].strip().lower() == split:
            yield r["_line"], {k: (v or "") for k, v in r.items()}
