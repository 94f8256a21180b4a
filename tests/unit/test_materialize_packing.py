"""The materializer's vectorised command packing (``BatchPacker.pack_arrow``, the path it sends) against the per-row
packing (``BatchPacker.pack``) and the layout's own fenced batch writes, and its batch bounds."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batch_jobs.materialize import BatchPacker, batch_bounds, pack_command
from skewless.core import layout
from skewless.core.dsl import Agg, Aggregation, Entity, EventSource, FeatureView, Window
from skewless.offline.tables import BatchError

CUTOFF = 86_400_000 * 20_000


def _packer() -> tuple[BatchPacker, list[str]]:
    src = EventSource("s", "orders", "raw.s", topic="s", partition_key="user_id")
    view = FeatureView("v", Entity("user", {"user_id": "string"}), src, [
        Aggregation("n", Agg.COUNT, None, Window.days(30)), Aggregation("m", Agg.COUNT, None, Window.days(7)),
        Aggregation("l", Agg.COUNT, None, Window.lifetime())])
    fields = sorted(layout.batch_windows(view))
    return BatchPacker(view, "p", CUTOFF, "run:1", "E", fields, 77), fields


def _rows(n: int) -> tuple[list[str], list[list[str]]]:
    """Tags and values of every length class: empty, multi-byte UTF-8, RESP-looking text, 10,000 characters."""
    odd = ["", "é", "日本語", "$3\r\nabc\r\n", "x" * 10_000, "[[1,2],[0],[null]]", "*1\r\n"]
    tags = [f"s=u{i}" if i % 3 else f"s=ü{i}%3A{odd[i % len(odd)][:5]}" for i in range(n)]
    values = [[odd[(i + j) % len(odd)] + str(i) * (j % 2) for i in range(n)] for j in range(3)]
    return tags, values


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_vectorised_packing_equals_the_per_row_packing_on_every_length_class(kind: pa.DataType) -> None:
    packer, _ = _packer()
    tags, values = _rows(40)
    arrow_tags, arrow_values = pa.array(tags, kind), [pa.array(v, kind) for v in values]
    assert bytes(packer.pack_arrow(arrow_tags, arrow_values, pa)) == packer.pack(tags, values)
    for lo, n in ((0, 1), (3, 7), (39, 1), (0, 40)):  # slices with offsets: the rows of one send
        got = packer.pack_arrow(arrow_tags.slice(lo, n), [v.slice(lo, n) for v in arrow_values], pa)
        assert bytes(got) == packer.pack(tags[lo:lo + n], [v[lo:lo + n] for v in values]), (lo, n)


def test_vectorised_packing_equals_the_layouts_fenced_batch_writes() -> None:
    packer, fields = _packer()
    tags, values = _rows(9)
    expected = b""
    for i, tag in enumerate(tags):
        key = f"p:v{layout.LAYOUT_VERSION}:v:v1:{{{tag}}}"
        record = {"cutoff": str(CUTOFF), "run": "run:1", "epoch": "E", **{f: v[i] for f, v in zip(fields, values)}}
        keys, argv = layout.batch_write_args(key, record, 77)
        expected += pack_command(["EVALSHA", layout.script_sha(layout.BATCH_WRITE_LUA), "1", *keys, *argv])
    assert bytes(packer.pack_arrow(pa.array(tags), [pa.array(v) for v in values], pa)) == expected


def test_a_null_serving_value_is_refused_in_one_line() -> None:
    packer, _ = _packer()
    with pytest.raises(BatchError, match="nulls"):
        packer.pack_arrow(pa.array(["s=a"]), [pa.array(["x"]), pa.array([None], pa.string()), pa.array(["y"])], pa)


@pytest.mark.parametrize("rows,step,first", [(0, 10, 3), (1, 10, 3), (3, 10, 3), (4, 10, 3), (25, 10, 3), (25, 5, 1000),
                                             (99_808, 10_000, 1_000), (10, 1, 1000)])
def test_batch_bounds_cover_every_row_once_the_first_at_most_first_the_rest_at_most_step(rows: int, step: int,
                                                                                         first: int) -> None:
    bounds = batch_bounds(rows, step, first)
    covered = [i for lo, hi in bounds for i in range(lo, hi)]
    assert covered == list(range(rows))
    assert all(hi > lo for lo, hi in bounds)
    if bounds:
        assert bounds[0][1] - bounds[0][0] <= min(step, first)
        assert all(hi - lo <= step for lo, hi in bounds[1:])
        assert all(hi - lo == step for lo, hi in bounds[1:-1])
