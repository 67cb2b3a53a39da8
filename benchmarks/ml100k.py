"""Get MovieLens 100K as a ``u.data`` file without leaving PyPI.

The benchmarks need ML-100K, but this project's machines reach only package registries. The
RecBole wheel on PyPI ships the complete ML-100K ratings (100,000 rows) as
``recbole/dataset_example/ml-100k/ml-100k.inter``; we download that wheel (no dependencies,
nothing installed), extract the one file and rewrite it in the original ``u.data`` layout
(user \\t item \\t rating \\t timestamp). Users with their own copy pass its path instead.

MovieLens data is provided by GroupLens for research use; see https://grouplens.org/datasets/movielens/.

    python benchmarks/ml100k.py [DEST_DIR]   # prints the path of u.data
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["ensure_ml100k"]

_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / ".data" / "ml-100k"


def ensure_ml100k(dest: Path = DEFAULT_DIR) -> Path:
    """Path of ``u.data`` (100,000 ratings), fetched once into ``dest``."""
    target = dest / "u.data"
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "recbole==1.2.1",
                "--no-deps",
                "--quiet",
                "-d",
                tmp,
            ],
            check=True,
        )
        wheel = next(Path(tmp).glob("recbole-*.whl"))
        with zipfile.ZipFile(wheel) as zf, zf.open(_MEMBER) as src:
            lines = src.read().decode("utf-8").splitlines()
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    partial = target.with_suffix(".tmp")
    partial.write_text(
        "".join(f"{u}\t{i}\t{int(float(r))}\t{int(float(t))}\n" for u, i, r, t in rows)
    )
    partial.replace(target)
    return target


if __name__ == "__main__":
    print(ensure_ml100k(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR))
