"""``python -m stream checkpoint {ls,inspect,export,prune}``: look into stored checkpoints.

``ls`` and ``inspect`` read only the JSON headers (nothing is unpickled, so they are safe on
files of unknown origin); with ``STREAM_CHECKPOINT_KEY`` set every file is also checked
against its HMAC, without it the output says *unverified*. ``export`` and ``prune`` need the
key: ``export`` restores the models, ``prune`` must know which file is good before deleting.

``inspect --json`` prints one object::

    {"directory": ..., "verified": bool, "created_at": newest ISO-8601 UTC,
     "offsets": {"<topic>": {"<partition>": next_offset}},
     "events_learned": {model: events, summed over partitions}, "run_count": ...,
     "users": sum over partitions (users are keyed to one partition),
     "items": max over partitions (partitions share items: a lower bound of the distinct count),
     "models": [...], "metrics": merged metrics record, "partitions": [per-partition detail],
     "errors": [{"topic", "partition", "error"}]}

Exit codes: 0 done; 1 a checkpoint problem (none found, a partition with no usable file, an
unsupported format version, I/O error); 2 bad usage or settings (e.g. no key for export).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from stream.checkpoint import CheckpointError, CheckpointInfo, CheckpointStore, TopicPartition
from stream.core import Pipeline, merge_metrics
from stream.events import MetricsRecord
from stream.settings import SettingsError, load_settings

__all__ = ["add_arguments", "build_parser", "main"]

logger = logging.getLogger(__name__)

_KEY_ENV = "STREAM_CHECKPOINT_KEY"
_DIR_ENV = "STREAM_CHECKPOINT_DIR"
_EXPORT_TOP_ITEMS = 50


class _UsageError(Exception):
    """Bad usage or settings: exit code 2."""


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``checkpoint`` sub-commands and flags to ``parser``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"checkpoint directory [env {_DIR_ENV}]",
    )
    common.add_argument("--topic", default=None, help="only this topic")
    common.add_argument("--partition", type=int, default=None, help="only this partition")
    parser.add_argument(
        "--dir", type=Path, default=None, help=f"checkpoint directory [env {_DIR_ENV}]"
    )
    parser.epilog = (
        f"The HMAC key is read from {_KEY_ENV} (never a flag: it would show in `ps`). "
        "ls and inspect read headers only and say 'unverified' without the key."
    )
    sub = parser.add_subparsers(dest="checkpoint_command", required=True, metavar="COMMAND")
    sub.add_parser(
        "ls", parents=[common], help="list checkpoint files: partition, offset, size, status"
    )
    inspect = sub.add_parser(
        "inspect", parents=[common], help="newest usable checkpoint of each partition"
    )
    inspect.add_argument("--json", action="store_true", help="print JSON (see module docs)")
    export = sub.add_parser(
        "export", parents=[common], help="portable JSON of the stored state (needs the key)"
    )
    export.add_argument("--output", type=Path, required=True, help="file to write ('-' for stdout)")
    prune = sub.add_parser(
        "prune",
        parents=[common],
        help="delete all but the newest N good checkpoints per partition (privacy requests)",
        description="Delete all but the newest N checkpoints that verify, per partition.",
    )
    prune.add_argument(
        "--keep-latest",
        type=_at_least_one,
        nargs="?",
        const=1,
        required=True,
        metavar="N",
        help="keep the newest N checkpoints that verify (N defaults to 1), delete the rest",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would be deleted")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stream checkpoint",
        description="List, inspect, export or prune stored checkpoints.",
    )
    add_arguments(parser)
    return parser


# --- helpers ------------------------------------------------------------------------------


def _open_store(ns: argparse.Namespace, need_key: bool) -> CheckpointStore:
    """The store of ``--dir``/``STREAM_CHECKPOINT_DIR``; read-only when there is no key."""
    try:
        settings = load_settings(checkpoint_dir=ns.dir)
    except SettingsError as exc:
        raise _UsageError(str(exc)) from None
    directory = settings.checkpoint_dir
    if directory is None:
        raise _UsageError(f"no checkpoint directory: pass --dir or set {_DIR_ENV}")
    key = settings.checkpoint_key
    if key is not None and not key.get_secret_value():
        key = None
    if key is None and need_key:
        raise _UsageError(
            f"{ns.checkpoint_command} needs {_KEY_ENV} (the key the worker signs with): "
            "only verified checkpoints are restored or deleted"
        )
    return CheckpointStore(directory, key, settings.checkpoint_keep)


def _selected(ns: argparse.Namespace, store: CheckpointStore) -> list[TopicPartition]:
    if not store.directory.is_dir():
        raise CheckpointError(f"checkpoint directory {store.directory} does not exist")
    chosen = [
        tp
        for tp in store.partitions()
        if (ns.topic is None or tp[0] == ns.topic)
        and (ns.partition is None or tp[1] == ns.partition)
    ]
    if not chosen:
        where = "" if ns.topic is None and ns.partition is None else " matching the filter"
        raise CheckpointError(f"no checkpoints{where} in {store.directory}")
    return chosen


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _partition_detail(info: CheckpointInfo) -> dict[str, Any]:
    h = info.header
    return {
        "topic": info.topic,
        "partition": info.partition,
        "file": str(info.path),
        "size": info.size,
        "verified": info.verified,
        "created_at": info.created_at,
        "next_offset": info.next_offset,
        "run_count": h.get("run_count"),
        "events_learned": h.get("events_learned", {}),
        "users": h.get("users"),
        "items": h.get("items"),
        "models": h.get("models", []),
        "recommender": h.get("recommender"),
        "served": h.get("served"),
        "updates": h.get("updates"),
        "model_versions": h.get("model_versions"),
        "metrics": h.get("metrics"),
    }


def _summary(directory: Path, infos: list[CheckpointInfo]) -> dict[str, Any]:
    offsets: dict[str, dict[str, int]] = {}
    learned: dict[str, int] = {}
    models: list[str] = []
    records: list[MetricsRecord] = []
    for info in infos:
        offsets.setdefault(info.topic, {})[str(info.partition)] = info.next_offset
        for name, n in dict(info.header.get("events_learned") or {}).items():
            learned[name] = learned.get(name, 0) + int(n)
        for name in info.header.get("models") or []:
            if name not in models:
                models.append(name)
        metrics = info.header.get("metrics")
        if isinstance(metrics, dict):
            with contextlib.suppress(ValueError):
                records.append(MetricsRecord.model_validate(metrics))
    merged = merge_metrics(records).model_dump(mode="json") if records else None
    if merged is not None:
        merged.pop("created_at", None)
        merged.pop("drifts", None)
        merged.pop("kind", None)
    return {
        "directory": str(directory),
        "verified": bool(infos) and all(i.verified for i in infos),
        "created_at": max((i.created_at for i in infos), default=None),
        "offsets": offsets,
        "events_learned": learned,
        "run_count": sum(int(i.header.get("run_count") or 0) for i in infos),
        "users": sum(int(i.header.get("users") or 0) for i in infos),
        "items": max((int(i.header.get("items") or 0) for i in infos), default=0),
        "models": models,
        "metrics": merged,
        "partitions": [_partition_detail(i) for i in infos],
    }


def _fmt(value: object) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


# --- commands -----------------------------------------------------------------------------


def _cmd_ls(ns: argparse.Namespace) -> int:
    store = _open_store(ns, need_key=False)
    rows = [("TOPIC", "PARTITION", "FILE", "CREATED_AT", "NEXT_OFFSET", "SIZE", "STATUS")]
    for tp in _selected(ns, store):
        for path in store.files(tp):
            size = path.stat().st_size
            try:
                info = store.info(path)
            except CheckpointError as exc:
                reason = str(exc).removeprefix(f"{path}: ")
                rows.append(
                    (tp[0], str(tp[1]), path.name, "-", "-", _human_size(size), f"bad: {reason}")
                )
                continue
            status = "verified" if info.verified else "unverified"
            if (info.topic, info.partition) != tp:
                status = f"bad: holds {info.topic}[{info.partition}]"
            rows.append(
                (tp[0], str(tp[1]), path.name, info.created_at, str(info.next_offset),
                 _human_size(size), status)
            )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )
    if not store.verifies:
        print(f"(unverified: set {_KEY_ENV} to check signatures)", file=sys.stderr)
    return 0


def _cmd_inspect(ns: argparse.Namespace) -> int:
    store = _open_store(ns, need_key=False)
    infos: list[CheckpointInfo] = []
    errors: list[dict[str, Any]] = []
    for tp in _selected(ns, store):
        try:
            info = store.newest_info(tp)
        except CheckpointError as exc:
            errors.append({"topic": tp[0], "partition": tp[1], "error": str(exc)})
            continue
        if info is None:
            errors.append({"topic": tp[0], "partition": tp[1], "error": "no checkpoint files"})
        else:
            infos.append(info)
    summary = _summary(store.directory, infos)
    summary["errors"] = errors
    if ns.json:
        print(json.dumps(summary, indent=2, sort_keys=False))
    else:
        _print_inspect(summary, verified=store.verifies)
    for err in errors:
        print(f"error: {err['error']}", file=sys.stderr)
    return 1 if errors else 0


def _print_inspect(summary: dict[str, Any], verified: bool) -> None:
    print(f"directory   {summary['directory']}")
    print(
        "signatures  "
        + ("verified with " + _KEY_ENV if verified else f"UNVERIFIED (set {_KEY_ENV})")
    )
    print(f"created_at  {summary['created_at']} (newest)")
    print(f"run_count   {summary['run_count']}")
    print(f"users       {summary['users']}   items {summary['items']} (max over partitions)")
    learned = ", ".join(f"{m} {n}" for m, n in summary["events_learned"].items())
    print(f"learned     {learned}")
    for part in summary["partitions"]:
        print(
            f"  {part['topic']}[{part['partition']}]  next_offset {part['next_offset']}  "
            f"users {part['users']}  items {part['items']}  created {part['created_at']}  "
            f"{Path(part['file']).name}"
        )
    metrics = summary["metrics"]
    if metrics:
        k = metrics["k"]
        head = f"  {'model':<20}{'HR@' + str(k):>9}{'NDCG@' + str(k):>9}{'MRR@' + str(k):>9}"
        print(f"metrics (cumulative | window of {metrics['window']})")
        print(head + f"{'MAE':>9}{'RMSE':>9}{'evaluated':>11}")
        for name, cum in metrics["cumulative_metrics"].items():
            win = metrics["window_metrics"].get(name, {})
            for label, m in (("", cum), (" (win)", win)):
                cells = [_fmt(m.get(f)) for f in ("hit_rate", "ndcg", "mrr", "mae", "rmse")]
                print(
                    f"  {name + label:<20}" + "".join(f"{c:>9}" for c in cells)
                    + f"{_fmt(m.get('evaluated')):>11}"
                )  # fmt: skip


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe rendering of model parameters (anything exotic becomes its repr)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if depth < 4 and isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    return repr(value)[:200]


def _vectors(table: Any) -> dict[str, list[float]] | None:
    """``{id: [floats]}`` from a mapping of ids to numpy vectors (River's MF latents)."""
    if not isinstance(table, dict) or not table:
        return None
    out: dict[str, list[float]] = {}
    for key, vec in table.items():
        tolist = getattr(vec, "tolist", None)
        if tolist is None:
            return None
        values = tolist()
        if not isinstance(values, list):
            return None
        out[str(key)] = [float(v) for v in values]
    return out


def _model_summary(model: Any, learned: int | None) -> dict[str, Any]:
    cls = type(model)
    summary: dict[str, Any] = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "events_learned": learned,
        "users": getattr(model, "n_users", None),
        "items": getattr(model, "n_items", None),
    }
    get_params = getattr(model, "_get_params", None)
    if callable(get_params):
        with contextlib.suppress(Exception):
            summary["params"] = _jsonable(get_params())
    # Matrix factorisation: latent vectors and biases where the model (or the River model it
    # wraps as ``river_model``) keeps them in mappings of id -> numpy vector (River's layout).
    inner = getattr(model, "river_model", None)
    source = inner if hasattr(inner, "u_latents") else model
    for attr in ("u_latents", "i_latents"):
        vectors = _vectors(getattr(source, attr, None))
        if vectors is not None:
            summary[attr] = vectors
    for attr in ("u_biases", "i_biases"):
        biases = getattr(source, attr, None)
        if isinstance(biases, dict):
            with contextlib.suppress(TypeError, ValueError):
                summary[attr] = {str(k): float(v) for k, v in biases.items()}
    return summary


def _export_partition(pipeline: Pipeline, info: CheckpointInfo) -> dict[str, Any]:
    def ids(items: dict[Hashable, None]) -> list[str]:
        return [str(i) for i in items]

    popular = pipeline.fallback.top_k(None, _EXPORT_TOP_ITEMS)
    return {
        "topic": info.topic,
        "partition": info.partition,
        "file": str(info.path),
        "header": info.header,
        "history": {str(user): ids(items) for user, items in pipeline.history.items()},
        "popular_items": [{"item_id": str(s.item), "score": float(s.score)} for s in popular],
        "models": {
            name: _model_summary(model, pipeline.learned.get(name))
            for name, model in pipeline.models.items()
        },
    }


def _write_atomic(output: Path, text: str) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp: mode 0600 (personal data)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _cmd_export(ns: argparse.Namespace) -> int:
    store = _open_store(ns, need_key=True)
    infos: list[CheckpointInfo] = []
    partitions: list[dict[str, Any]] = []
    errors: list[str] = []
    for _tp, found in store.iter_newest(_selected(ns, store)):
        if isinstance(found, CheckpointError):
            errors.append(str(found))
            continue
        pipeline, info = found
        infos.append(info)
        partitions.append(_export_partition(pipeline, info))
    if errors:
        for err in errors:
            print(f"error: {err}", file=sys.stderr)
        print("nothing written", file=sys.stderr)
        return 1
    document = {
        "format": "stream-checkpoint-export",
        "version": 1,
        "summary": _summary(store.directory, infos),
        "partitions": partitions,
    }
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    if str(ns.output) == "-":
        sys.stdout.write(text)
    else:
        _write_atomic(ns.output, text)
        users = sum(len(p["history"]) for p in partitions)
        print(f"exported {len(partitions)} partition(s), {users} users to {ns.output}")
    return 0


def _cmd_prune(ns: argparse.Namespace) -> int:
    store = _open_store(ns, need_key=True)
    failed = False
    for tp in _selected(ns, store):
        before = len(store.files(tp))
        try:
            kept, deleted = store.prune(tp, dry_run=ns.dry_run, keep=ns.keep_latest)
        except CheckpointError as exc:
            print(f"error: {exc}; nothing deleted there", file=sys.stderr)
            failed = True
            continue
        verb = "would delete" if ns.dry_run else "deleted"
        others = before - 1 - len(deleted)
        also = f" and {others} older" if others > 0 else ""
        print(
            f"{tp[0]}[{tp[1]}]: kept {kept.path.name} (next_offset {kept.next_offset}, "
            f"created {kept.created_at}){also}; {verb} {len(deleted)} file(s)"
        )
        for path in deleted:
            print(f"  {verb} {path.name}")
    return 1 if failed else 0


_COMMANDS = {"ls": _cmd_ls, "inspect": _cmd_inspect, "export": _cmd_export, "prune": _cmd_prune}


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run a ``checkpoint`` sub-command; returns the exit code (errors go to stderr).

    ``args`` is a list of arguments (``["inspect", "--json"]``) or a namespace already
    parsed by a parser set up with :func:`add_arguments`.
    """
    if isinstance(args, argparse.Namespace) and hasattr(args, "checkpoint_command"):
        ns = args
    else:
        argv = list(getattr(args, "rest", args) or []) if args is not None else sys.argv[1:]
        try:
            ns = build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse already printed usage or help
            return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        return _COMMANDS[ns.checkpoint_command](ns)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
