package dev.skewless.flink;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.table.api.DataTypes;
import org.apache.flink.table.runtime.typeutils.ExternalTypeInfo;
import org.apache.flink.table.types.DataType;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * The keep-first Deduplicate of a source job as a keyed operator (keyed by Kafka partition; called from
 * Python, streaming_jobs.job): every row of the ordered view passes through with two more columns,
 * {@code dup} (an admissible row that copies an earlier one: same partition, event id and ts) and
 * {@code dedup_entries} (the partition's live de-duplication entries after the row), and two more for the tile
 * state's clock ({@link #apply}). The rule and the state
 * bound are {@link Dedup}'s; the progress aggregate counts {@code dup} per partition, so the duplicate count
 * is exact at the offset of every progress row.
 */
public final class DedupFunction extends KeyedProcessFunction<Integer, Row, Row> {
    private static final long serialVersionUID = 1L;
    public static final String DUP = "dup";
    public static final String ENTRIES = "dedup_entries";
    /** The tile state's event-time clock: min over this subtask's partitions of (M(p) - L), and the subtask. */
    public static final String LOW = "low_ms";
    public static final String SOURCE = "low_src";

    private final long lateness;
    private final int id;
    private final int ts;
    private final int reason;
    private final int width;
    private transient Dedup dedup;
    private transient MapState<String, Long> entries;
    private transient ValueState<long[]> scalars;
    private transient Dedup.Store store;
    private final int partitionIndex;
    private final int partitions;
    private final int maxParallelism;
    private transient int subtask;
    private transient int[] slot;  // partition -> index in max, -1 when another subtask reads it
    private transient long[] max;  // M(p) of this subtask's partitions (not checkpointed: a restore waits for each)

    DedupFunction(long latenessMs, int id, int ts, int reason, int width, int partitionIndex, int partitions,
                  int maxParallelism) {
        this.partitionIndex = partitionIndex;
        this.partitions = partitions;
        this.maxParallelism = maxParallelism;
        this.lateness = latenessMs;
        this.id = id;
        this.ts = ts;
        this.reason = reason;
        this.width = width;
    }

    /**
     * The key of a row: an Integer standing for its partition, chosen so that partitions spread evenly over
     * the subtasks whatever the parallelism (Flink hashes small Integers into few key groups: with 128 key
     * groups and 2 subtasks, partitions 0-3 all land on one). Partition p gets the first k = p + j * 2^20 whose
     * key group is the p-th point of the van der Corput sequence times the max parallelism (0, 1/2, 1/4, 3/4,
     * ...); it depends only on the max parallelism, which a restore keeps, so the same partition always gets
     * the same key (and distinct partitions distinct keys).
     */
    static final class Partition implements KeySelector<Row, Integer> {
        private static final long serialVersionUID = 1L;
        private final int index;
        private final int maxParallelism;
        private transient Map<Integer, Integer> keys;

        Partition(int index, int maxParallelism) {
            this.index = index;
            this.maxParallelism = maxParallelism;
        }

        @Override
        public Integer getKey(Row row) {
            if (keys == null) {
                keys = new HashMap<>();
            }
            return keys.computeIfAbsent((Integer) row.getField(index), p -> spreadKey(p, maxParallelism));
        }
    }

    static int spreadKey(int partition, int maxParallelism) {
        double point = (Integer.reverse(partition) >>> 1) / (double) (1L << 31);  // van der Corput, base 2
        int target = (int) (point * maxParallelism);
        for (int j = 0; j < 1 << 11; j++) {
            int key = partition + (j << 20);
            if (KeyGroupRangeAssignment.assignToKeyGroup(key, maxParallelism) == target) {
                return key;
            }
        }
        return partition;
    }

    /** Tests: args {@code <max parallelism> <parallelism> <partitions>}; stdout per partition {@code key subtask}. */
    public static void main(String[] args) {
        int maxParallelism = Integer.parseInt(args[0]);
        int parallelism = Integer.parseInt(args[1]);
        StringBuilder out = new StringBuilder();
        for (int p = 0; p < Integer.parseInt(args[2]); p++) {
            int key = spreadKey(p, maxParallelism);
            out.append(key).append(' ')
                .append(KeyGroupRangeAssignment.assignKeyToParallelOperator(key, maxParallelism, parallelism)).append('\n');
        }
        System.out.print(out);
    }

    /**
     * The de-duplicated stream of {@code ordered} (columns {@code p}, {@code idk}, {@code ts}, {@code reason}
     * among others), with {@code dup}, {@code dedup_entries}, {@code low_ms} and {@code low_src} appended: the
     * last two are the tile state's event-time clock (min over the subtask's partitions, of the topic's
     * {@code partitions}, of M(p) - L; Long.MIN_VALUE until each has a row) and the subtask that computed it
     * (see {@link TileAggregateOperator}: a column, not a Flink watermark, which the SQL between would replace).
     */
    public static DataStream<Row> apply(DataStream<Row> ordered, long latenessMs, String source, int partitions) {
        DataType in = ((ExternalTypeInfo<Row>) ordered.getType()).getDataType();
        List<String> names = DataType.getFieldNames(in);
        List<DataType> types = DataType.getFieldDataTypes(in);
        List<DataTypes.Field> fields = new ArrayList<>();
        for (int i = 0; i < names.size(); i++) {
            fields.add(DataTypes.FIELD(names.get(i), types.get(i)));
        }
        fields.add(DataTypes.FIELD(DUP, DataTypes.BOOLEAN().notNull()));
        fields.add(DataTypes.FIELD(ENTRIES, DataTypes.BIGINT().notNull()));
        fields.add(DataTypes.FIELD(LOW, DataTypes.BIGINT().notNull()));
        fields.add(DataTypes.FIELD(SOURCE, DataTypes.INT().notNull()));
        DataType out = DataTypes.ROW(fields.toArray(new DataTypes.Field[0])).notNull();
        int maxParallelism = maxParallelism(ordered.getExecutionEnvironment());
        DedupFunction f = new DedupFunction(latenessMs, index(names, "idk"), index(names, "ts"), index(names, "reason"),
                                            names.size(), index(names, "p"), partitions, maxParallelism);
        return ordered.keyBy(new Partition(index(names, "p"), maxParallelism), Types.INT).process(f, ExternalTypeInfo.of(out))
            .setMaxParallelism(maxParallelism).name("deduplicate-" + source).uid("deduplicate-" + source);
    }

    /** The max parallelism the Deduplicate runs with (its keys depend on it). */
    static int maxParallelism(StreamExecutionEnvironment env) {
        int maxParallelism = env.getMaxParallelism();
        if (maxParallelism <= 0) {
            int parallelism = env.getParallelism();
            maxParallelism = parallelism > 0 ? KeyGroupRangeAssignment.computeDefaultMaxParallelism(parallelism)
                : KeyGroupRangeAssignment.DEFAULT_LOWER_BOUND_MAX_PARALLELISM;
        }
        return maxParallelism;
    }

    /** The Deduplicate subtask that reads partition {@code p}. */
    static int subtaskOf(int p, int maxParallelism, int parallelism) {
        return KeyGroupRangeAssignment.assignKeyToParallelOperator(spreadKey(p, maxParallelism), maxParallelism, parallelism);
    }

    private static int index(List<String> names, String name) {
        int i = names.indexOf(name);
        if (i < 0) {
            throw new IllegalArgumentException("the ordered view has no column " + name + ": " + names);
        }
        return i;
    }

    @Override
    public void open(OpenContext context) {
        subtask = getRuntimeContext().getTaskInfo().getIndexOfThisSubtask();
        int parallelism = getRuntimeContext().getTaskInfo().getNumberOfParallelSubtasks();
        slot = new int[partitions];
        int owned = 0;
        for (int p = 0; p < partitions; p++) {
            slot[p] = subtaskOf(p, maxParallelism, parallelism) == subtask ? owned++ : -1;
        }
        max = new long[owned];
        Arrays.fill(max, Long.MIN_VALUE);
        dedup = new Dedup(lateness);
        entries = getRuntimeContext().getMapState(new MapStateDescriptor<>("dedup-entries", Types.STRING, Types.LONG));
        scalars = getRuntimeContext().getState(
            new ValueStateDescriptor<>("dedup-scalars", PrimitiveArrayTypeInfo.LONG_PRIMITIVE_ARRAY_TYPE_INFO));
        store = new Dedup.Store() {
            @Override
            public boolean contains(String key) throws Exception {
                return entries.contains(key);
            }

            @Override
            public void put(String key, long t) throws Exception {
                entries.put(key, t);
            }

            @Override
            public Iterator<Map.Entry<String, Long>> entries() throws Exception {
                return entries.iterator();
            }
        };
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<Row> collector) throws Exception {
        long[] s = scalars.value();
        boolean copy = false;
        if (row.getField(reason) == null) {
            if (s == null) {
                s = Dedup.initial();
            }
            copy = dedup.duplicate(store, s, (String) row.getField(id), (Long) row.getField(ts));
            scalars.update(s);
            int p = (Integer) row.getField(partitionIndex);
            if (p >= 0 && p < partitions && slot[p] >= 0) {
                max[slot[p]] = s[Dedup.MAX];
            }
        }
        long low = Long.MAX_VALUE;
        for (long m : max) {
            low = Math.min(low, m);
        }
        Row out = Row.withPositions(row.getKind(), width + 4);
        for (int i = 0; i < width; i++) {
            out.setField(i, row.getField(i));
        }
        out.setField(width, copy);
        out.setField(width + 1, s == null ? 0L : s[Dedup.LIVE]);
        out.setField(width + 2, low == Long.MIN_VALUE || low == Long.MAX_VALUE ? low : low - lateness);
        out.setField(width + 3, subtask);
        collector.collect(out);
    }
}
