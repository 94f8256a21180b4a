package dev.skewless.flink;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.flink.api.common.typeinfo.BasicArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * The local half of the tile aggregation (like the SQL mini-batch's local aggregate), chained to the tile expansion
 * before the keyed exchange: it expands each admitted event's contributions row ({@code ts, low_ms, low_src, k<m>..,
 * a<j>_<i>..}: per output j its key columns and arguments, see {@link TileState.Output}) into one tile per output
 * (start {@code ts - ts % H}) and folds the rows of one bundle into one partial {@link TileState} accumulator per tile and emits them as {@link #TYPE} rows
 * ({@code key, out, keys, tile_start, low_ms, low_src, acc}) that {@link TileAggregateOperator} merges: one row and one
 * state access per tile per bundle instead of one per event, and a compact row across the exchange.
 *
 * <p>A bundle is emitted at most {@code bundleMs} of processing time after its first row, at {@link #BUNDLE_KEYS}
 * tiles, before every checkpoint barrier (so it keeps no state) and at the end of the input. Each partial carries the
 * tile clock ({@code low_ms}, {@code low_src}) of its source subtask as of the bundle's START (the largest value seen
 * before its first row; Long.MIN_VALUE before any): every row of this bundle and of later ones has ts >= its own
 * {@code low_ms} >= that value (this operator is chained to the Deduplicate subtask's stream, so its rows stay in
 * order), so no tile still to be merged is released by it, as row by row. (The bundle's largest value would not do: a
 * partial emitted before another of the same bundle could release that one's tile.)
 */
public final class TilePreAggregate extends AbstractStreamOperator<Row> implements OneInputStreamOperator<Row, Row> {
    private static final long serialVersionUID = 1L;
    static final int BUNDLE_KEYS = 20_000;
    /** A partial: key (out, keys, tile start joined by NUL), out, keys, tile_start, low_ms, low_src, accumulator. */
    public static final TypeInformation<Row> TYPE = new RowTypeInfo(Types.STRING, Types.INT,
        BasicArrayTypeInfo.STRING_ARRAY_TYPE_INFO, Types.LONG, Types.LONG, Types.INT, BasicArrayTypeInfo.STRING_ARRAY_TYPE_INFO);

    private final String spec;
    private final long bundleMs;
    private transient TileState tiles;
    private transient Map<TileId, Tile> bundle;
    private transient List<Tile> order;
    private transient Map<Integer, Long> lows;  // source subtask -> largest low_ms seen
    private transient Map<Integer, Long> sent;  // source subtask -> largest low_ms seen before the current bundle
    private transient boolean flushArmed;
    private transient TileId probe;

    /** A tile: output, entity key, tile start (a reusable probe for look-ups; a copy is kept per tile). */
    private static final class TileId {
        int out;
        final String[] keys;
        long tileStart;
        int hash;

        TileId(int out, String[] keys, long tileStart) {
            this.out = out;
            this.keys = keys;
            this.tileStart = tileStart;
            rehash();
        }

        void rehash() {
            int h = 31 * out + Long.hashCode(tileStart);
            for (String k : keys) {
                h = 31 * h + (k == null ? 0 : k.hashCode());
            }
            hash = h;
        }

        @Override
        public int hashCode() {
            return hash;
        }

        @Override
        public boolean equals(Object other) {
            if (!(other instanceof TileId)) {
                return false;
            }
            TileId t = (TileId) other;
            return t.hash == hash && t.out == out && t.tileStart == tileStart && Arrays.equals(t.keys, keys);
        }

        /** The keyed exchange's key: out, keys, tile start joined by NUL. */
        String key() {
            StringBuilder b = new StringBuilder().append(out);
            for (String k : keys) {
                b.append('\u0000').append(k);
            }
            return b.append('\u0000').append(tileStart).toString();
        }
    }

    /** One tile's partial fold in the current bundle. */
    private static final class Tile {
        final TileId id;
        final TileState.Partial fold;
        int src;

        Tile(TileId id, TileState.Partial fold) {
            this.id = id;
            this.fold = fold;
        }
    }

    TilePreAggregate(String spec, long bundleMs) {
        this.spec = spec;
        this.bundleMs = Math.max(1L, bundleMs);
    }

    @Override
    public void open() throws Exception {
        super.open();
        tiles = new TileState(spec);
        bundle = new HashMap<>();
        order = new ArrayList<>();
        lows = new HashMap<>();
        sent = new HashMap<>();
        probe = new TileId(0, new String[tiles.keyWidth], 0);
    }

    @Override
    public void processElement(StreamRecord<Row> record) throws Exception {
        Row row = record.getValue();
        long ts = (Long) row.getField(0);
        long low = (Long) row.getField(1);
        int src = (Integer) row.getField(2);
        Long seen = lows.get(src);
        if (seen == null || low > seen) {
            lows.put(src, low);
        }
        int kw = tiles.keyWidth;
        for (int out = 0; out < tiles.outputs.length; out++) {
            TileState.Output o = tiles.outputs[out];
            probe.out = out;
            probe.tileStart = ts - ts % o.tileMs;  // as the SQL's ts - MOD(ts, H)
            for (int i = 0; i < kw; i++) {
                probe.keys[i] = i < o.keyCols.length ? (String) row.getField(o.keyCols[i]) : "";
            }
            probe.rehash();
            Tile t = bundle.get(probe);
            if (t == null) {
                TileId id = new TileId(out, probe.keys.clone(), probe.tileStart);
                t = new Tile(id, tiles.partial(out));
                bundle.put(id, t);
                order.add(t);
            }
            int base = o.argCol;
            tiles.add(t.fold, i -> (String) row.getField(base + i));
            t.src = src;
        }
        if (bundle.size() >= BUNDLE_KEYS) {
            emitBundle();
        } else if (!flushArmed) {
            flushArmed = true;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + bundleMs, t -> {
                flushArmed = false;
                emitBundle();
            });
        }
    }

    private void emitBundle() {
        if (order.isEmpty()) {
            return;
        }
        StreamRecord<Row> record = new StreamRecord<>(null);
        for (Tile t : order) {  // first-seen order
            output.collect(record.replace(Row.of(t.id.key(), t.id.out, t.id.keys, t.id.tileStart,
                sent.getOrDefault(t.src, Long.MIN_VALUE), t.src, tiles.accumulator(t.fold))));
        }
        sent.putAll(lows);
        bundle.clear();
        order.clear();
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        if (mark.getTimestamp() == Long.MAX_VALUE) {  // the end of a bounded input
            emitBundle();
        }
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        super.prepareSnapshotPreBarrier(checkpointId);
        emitBundle();
    }

    @Override
    public void finish() throws Exception {
        emitBundle();
        super.finish();
    }
}
