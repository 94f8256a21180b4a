package dev.skewless.flink;

import java.util.ArrayList;
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
 * {@code dedup_entries} (the partition's live de-duplication entries after the row). The rule and the state
 * bound are {@link Dedup}'s; the progress aggregate counts {@code dup} per partition, so the duplicate count
 * is exact at the offset of every progress row.
 */
public final class DedupFunction extends KeyedProcessFunction<Integer, Row, Row> {
    private static final long serialVersionUID = 1L;
    public static final String DUP = "dup";
    public static final String ENTRIES = "dedup_entries";

    private final long lateness;
    private final int id;
    private final int ts;
    private final int reason;
    private final int width;
    private transient Dedup dedup;
    private transient MapState<String, Long> entries;
    private transient ValueState<long[]> scalars;
    private transient Dedup.Store store;

    DedupFunction(long latenessMs, int id, int ts, int reason, int width) {
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
     * among others), with {@code dup} and {@code dedup_entries} appended, and the watermarks of the tile state
     * ({@link PartitionWatermarks}: min over the topic's {@code partitions} of (M(p) - L), moving in steps of
     * {@code stepMs}).
     */
    public static DataStream<Row> apply(DataStream<Row> ordered, long latenessMs, String source, int partitions,
                                        long stepMs) {
        DataType in = ((ExternalTypeInfo<Row>) ordered.getType()).getDataType();
        List<String> names = DataType.getFieldNames(in);
        List<DataType> types = DataType.getFieldDataTypes(in);
        List<DataTypes.Field> fields = new ArrayList<>();
        for (int i = 0; i < names.size(); i++) {
            fields.add(DataTypes.FIELD(names.get(i), types.get(i)));
        }
        fields.add(DataTypes.FIELD(DUP, DataTypes.BOOLEAN().notNull()));
        fields.add(DataTypes.FIELD(ENTRIES, DataTypes.BIGINT().notNull()));
        DataType out = DataTypes.ROW(fields.toArray(new DataTypes.Field[0])).notNull();
        DedupFunction f = new DedupFunction(latenessMs, index(names, "idk"), index(names, "ts"), index(names, "reason"),
                                            names.size());
        int maxParallelism = ordered.getExecutionEnvironment().getMaxParallelism();
        if (maxParallelism <= 0) {
            int parallelism = ordered.getExecutionEnvironment().getParallelism();
            maxParallelism = parallelism > 0 ? KeyGroupRangeAssignment.computeDefaultMaxParallelism(parallelism)
                : KeyGroupRangeAssignment.DEFAULT_LOWER_BOUND_MAX_PARALLELISM;
        }
        ExternalTypeInfo<Row> type = ExternalTypeInfo.of(out);
        return ordered.keyBy(new Partition(index(names, "p"), maxParallelism), Types.INT).process(f, type)
            .setMaxParallelism(maxParallelism).name("deduplicate-" + source).uid("deduplicate-" + source)
            .transform("partition-watermarks-" + source, type, new PartitionWatermarks(partitions, latenessMs, stepMs,
                maxParallelism, index(names, "p"), index(names, "ts"), index(names, "reason")))
            .setMaxParallelism(maxParallelism).uid("partition-watermarks-" + source);
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
        }
        Row out = Row.withPositions(row.getKind(), width + 2);
        for (int i = 0; i < width; i++) {
            out.setField(i, row.getField(i));
        }
        out.setField(width, copy);
        out.setField(width + 1, s == null ? 0L : s[Dedup.LIVE]);
        collector.collect(out);
    }
}
