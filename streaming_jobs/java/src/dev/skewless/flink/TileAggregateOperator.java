package dev.skewless.flink;

import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.BasicArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.runtime.state.VoidNamespace;
import org.apache.flink.runtime.state.VoidNamespaceSerializer;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.InternalTimer;
import org.apache.flink.streaming.api.operators.InternalTimerService;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.operators.Triggerable;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.table.runtime.typeutils.ExternalTypeInfo;
import org.apache.flink.table.types.DataType;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;
import org.apache.flink.util.TimeUtils;

/**
 * The tile aggregation of a source job as a keyed operator (key: output, entity key, tile start), replacing the
 * SQL {@code GROUP BY key, tile_start} whose state Flink keeps forever (its state TTL counts processing time).
 * Input: the partial accumulators of {@link TilePreAggregate} (one per tile per bundle of the admitted events'
 * contributions rows, see {@link TileState}), chained before the exchange;
 * output: the changelog's tile rows ({@code 'T', view, tile_ms, k.., tile_start, version, c..}), one per partial
 * merged (so at most one per tile per bundle and source subtask, like the SQL mini-batch).
 *
 * <p>State: one {@link TileState} accumulator per key and one event-time timer at {@link TileState#releaseAt}.
 * The event time is the operator's own clock, not the watermarks arriving from the SQL operators in between
 * (a proctime mini-batch assigner there emits processing-time watermarks): each partial carries {@code low_ms}, min
 * over the partitions of the Deduplicate subtask {@code low_src} of (M(p) - L) as of its bundle's start
 * ({@link DedupFunction}, {@link TilePreAggregate}); the clock is the minimum over every Deduplicate subtask that
 * reads a partition of the largest value seen from it (Long.MIN_VALUE until each has sent one), so a quiet
 * partition holds every release back. It advances the timer service in steps of at least {@code stepMs}. When a
 * timer fires no admissible event can reach the tile any more: the accumulator is dropped and the tile's version
 * can never restart. The end of a bounded input (the final watermark) releases everything.
 *
 * <p>Gauge {@code skewless_tile_entries}: the subtask's live accumulators (kept in operator state).
 */
public final class TileAggregateOperator extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, Triggerable<String, VoidNamespace> {
    private static final long serialVersionUID = 1L;
    public static final String ENTRIES_GAUGE = "skewless_tile_entries";
    // "<prefix><job id>/<subtask>" -> live accumulators (an AtomicLong), for jobs on a MiniCluster in this JVM (tests,
    // bench/stream_soak.py). In the system properties: the job's classes come from its own class loader, the
    // caller's (the Python gateway's) from another, so a static field of this class would not be shared.
    private static final String LIVE_PREFIX = "skewless.tile-entries/";

    private final String spec;
    private final int arity;
    private final int partitions;
    private final int maxParallelism;
    private final int dedupParallelism;
    private final long stepMs;
    private transient long[] lows;  // per Deduplicate subtask: the largest low_ms seen (MAX_VALUE: reads no partition)
    private transient long clock;
    private transient TileState tiles;
    private transient ValueState<String[]> accumulators;
    private transient InternalTimerService<VoidNamespace> timers;
    private transient AtomicLong live;
    private transient ListState<Long> liveState;

    TileAggregateOperator(String spec, int arity, int partitions, int maxParallelism, int dedupParallelism,
                          long stepMs) {
        this.spec = spec;
        this.arity = arity;
        this.partitions = partitions;
        this.maxParallelism = maxParallelism;
        this.dedupParallelism = dedupParallelism;
        this.stepMs = Math.max(1L, stepMs);
    }

    /** The key of a partial: out_id, k0.., tile_start joined by NUL (computed by {@link TilePreAggregate}). */
    static final class TileKey implements KeySelector<Row, String> {
        private static final long serialVersionUID = 1L;

        @Override
        public String getKey(Row row) {
            return (String) row.getField(0);
        }
    }

    /**
     * The changelog with the tile rows of {@code contrib} added ({@code contrib}: the compiler's
     * {@code <ns>_contrib} view as a DataStream; {@code spec}: {@link TileState}'s; {@code bundle}: the pre-aggregation's
     * bundle interval, a Flink duration such as "5 s", the SQL mini-batch's latency).
     */
    public static DataStream<Row> attach(DataStream<Row> changelog, DataStream<Row> contrib, String spec, String bundle,
                                         String source, int partitions) {
        TileState tiles = new TileState(spec);
        List<String> names = DataType.getFieldNames(((ExternalTypeInfo<Row>) contrib.getType()).getDataType());
        int width = 3;
        for (TileState.Output o : tiles.outputs) {
            for (int c : o.keyCols) {
                width = Math.max(width, c + 1);
            }
            width = Math.max(width, o.argCol + o.kinds.length);
        }
        if (names.size() != width || !"ts".equals(names.get(0)) || !DedupFunction.LOW.equals(names.get(1))
                || !DedupFunction.SOURCE.equals(names.get(2))) {
            throw new IllegalArgumentException("the contributions view has columns " + names + "; expected ts, low_ms, "
                + "low_src, the keys and the arguments, " + width + " in all (the tile spec: " + spec + ")");
        }
        long step = Long.MAX_VALUE;
        for (TileState.Output o : tiles.outputs) {
            step = Math.min(step, o.tileMs);
        }
        StreamExecutionEnvironment env = contrib.getExecutionEnvironment();
        @SuppressWarnings("unchecked")
        TypeInformation<Row> type = (TypeInformation<Row>) changelog.getType();
        int arity = 3 + tiles.keyWidth + 2 + tiles.valueWidth;
        long bundleMs = TimeUtils.parseDuration(bundle).toMillis();
        DataStream<Row> tileRows = contrib
            .transform("tile-bundles-" + source, TilePreAggregate.TYPE, new TilePreAggregate(spec, bundleMs))
            .uid("tile-bundles-" + source)
            .keyBy(new TileKey(), Types.STRING)
            .transform("tiles-" + source, type, new TileAggregateOperator(spec, arity, partitions,
                DedupFunction.maxParallelism(env), Math.max(1, env.getParallelism()), step))
            .uid("tiles-" + source);
        return changelog.union(tileRows);
    }

    /** The live tile accumulators of a job run in this JVM (its last value once the job ended; -1: unknown job). */
    public static long liveEntries(String jobId) {
        String prefix = LIVE_PREFIX + jobId + "/";
        long sum = -1;
        for (Map.Entry<Object, Object> e : System.getProperties().entrySet()) {
            if (e.getKey() instanceof String && ((String) e.getKey()).startsWith(prefix) && e.getValue() instanceof AtomicLong) {
                sum = Math.max(sum, 0) + ((AtomicLong) e.getValue()).get();
            }
        }
        return sum;
    }

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        liveState = context.getOperatorStateStore().getListState(new ListStateDescriptor<>("tile-entries", Types.LONG));
        long n = 0;
        for (Long part : liveState.get()) {
            n += part;
        }
        live = new AtomicLong(n);
    }

    @Override
    public void snapshotState(StateSnapshotContext context) throws Exception {
        super.snapshotState(context);
        liveState.update(List.of(live.get()));
    }

    @Override
    public void open() throws Exception {
        super.open();
        tiles = new TileState(spec);
        accumulators = getPartitionedState(new ValueStateDescriptor<>("tile-accumulator",
            BasicArrayTypeInfo.STRING_ARRAY_TYPE_INFO));
        timers = getInternalTimerService("tile-release", VoidNamespaceSerializer.INSTANCE, this);
        lows = new long[dedupParallelism];
        Arrays.fill(lows, Long.MAX_VALUE);
        for (int p = 0; p < partitions; p++) {
            lows[DedupFunction.subtaskOf(p, maxParallelism, dedupParallelism)] = Long.MIN_VALUE;
        }
        clock = Long.MIN_VALUE;
        getMetricGroup().gauge(ENTRIES_GAUGE, live::get);
        System.getProperties().put(LIVE_PREFIX + getRuntimeContext().getJobInfo().getJobId() + "/"
            + getRuntimeContext().getTaskInfo().getIndexOfThisSubtask(), live);
    }

    @Override
    public void processElement(StreamRecord<Row> record) throws Exception {
        Row row = record.getValue();
        int out = (Integer) row.getField(1);
        String[] keys = (String[]) row.getField(2);
        long tileStart = (Long) row.getField(3);
        long low = (Long) row.getField(4);
        int src = (Integer) row.getField(5);
        String[] part = (String[]) row.getField(6);
        String[] acc = accumulators.value();
        if (acc == null) {
            acc = part.clone();
            timers.registerEventTimeTimer(VoidNamespace.INSTANCE, tiles.releaseAt(out, tileStart));
            live.lazySet(live.get() + 1);
        } else {
            tiles.merge(out, acc, part);
        }
        accumulators.update(acc);
        emit(out, keys, tileStart, acc);
        if (src >= 0 && src < lows.length && low > lows[src] && lows[src] != Long.MAX_VALUE) {
            lows[src] = low;
            long min = Long.MAX_VALUE;
            for (long l : lows) {
                min = Math.min(min, l);
            }
            if (min != Long.MIN_VALUE && (clock == Long.MIN_VALUE || min >= clock + stepMs)) {
                clock = min;
                super.processWatermark(new Watermark(min));  // fires the due release timers (changes the key)
            }
        }
    }

    private void emit(int out, String[] keys, long tileStart, String[] acc) {
        TileState.Output o = tiles.outputs[out];
        int kw = tiles.keyWidth;
        Row r = Row.withPositions(RowKind.INSERT, arity);
        r.setField(0, "T");
        r.setField(1, o.view);
        r.setField(2, o.tileMs);
        for (int i = 0; i < kw; i++) {
            r.setField(3 + i, keys[i]);
        }
        r.setField(3 + kw, tileStart);
        r.setField(4 + kw, TileState.version(acc));
        String[] c = tiles.values(out, acc);
        for (int i = 0; i < c.length; i++) {
            r.setField(5 + kw + i, c[i]);
        }
        output.collect(new StreamRecord<>(r));
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        if (mark.getTimestamp() == Long.MAX_VALUE) {  // the end of a bounded input; other watermarks are not ours
            super.processWatermark(mark);
        }
    }

    @Override
    public void onEventTime(InternalTimer<String, VoidNamespace> timer) throws Exception {
        accumulators.clear();
        live.lazySet(live.get() - 1);
    }

    @Override
    public void onProcessingTime(InternalTimer<String, VoidNamespace> timer) {
    }

}
