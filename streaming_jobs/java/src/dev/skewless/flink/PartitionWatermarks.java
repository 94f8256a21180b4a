package dev.skewless.flink;

import java.util.Arrays;
import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * The event-time clock of the tile state (chained after the Deduplicate, which is keyed by partition): forwards
 * every row and emits the watermark min over this subtask's partitions of (M(p) - L), M(p) the partition's
 * running maximum event time over rows that passed rules 1-2 (the same M as the late check). A partition that
 * has sent no such row holds the watermark at its start, so does a quiet one: its M stays where it is. Flink
 * takes the minimum over the subtasks downstream, so the tile operator's watermark is min over all the source's
 * partitions of (M(p) - L): no event still admissible has a smaller ts. Watermarks are emitted when the minimum
 * moved by at least {@code stepMs} (the smallest tile size: releases need no finer clock). M is not checkpointed:
 * after a restore the clock starts from nothing again and waits for every partition (releases only later).
 */
public final class PartitionWatermarks extends AbstractStreamOperator<Row> implements OneInputStreamOperator<Row, Row> {
    private static final long serialVersionUID = 1L;

    private final int partitions;
    private final long lateness;
    private final long stepMs;
    private final int maxParallelism;
    private final int partitionIndex;
    private final int tsIndex;
    private final int reasonIndex;
    private transient int[] slot;  // partition -> index in max, -1 when another subtask reads it
    private transient long[] max;
    private transient long emitted;

    PartitionWatermarks(int partitions, long latenessMs, long stepMs, int maxParallelism, int partitionIndex, int tsIndex,
                        int reasonIndex) {
        this.partitions = partitions;
        this.lateness = latenessMs;
        this.stepMs = Math.max(1L, stepMs);
        this.maxParallelism = maxParallelism;
        this.partitionIndex = partitionIndex;
        this.tsIndex = tsIndex;
        this.reasonIndex = reasonIndex;
    }

    @Override
    public void open() throws Exception {
        super.open();
        int subtask = getRuntimeContext().getTaskInfo().getIndexOfThisSubtask();
        int parallelism = getRuntimeContext().getTaskInfo().getNumberOfParallelSubtasks();
        slot = new int[partitions];
        int owned = 0;
        for (int p = 0; p < partitions; p++) {
            int key = DedupFunction.spreadKey(p, maxParallelism);
            slot[p] = KeyGroupRangeAssignment.assignKeyToParallelOperator(key, maxParallelism, parallelism) == subtask ? owned++ : -1;
        }
        max = new long[owned];
        Arrays.fill(max, Long.MIN_VALUE);
        emitted = Long.MIN_VALUE;
        if (owned == 0) {  // no partition here: this subtask holds nothing back
            emitted = Long.MAX_VALUE - 1;
            output.emitWatermark(new Watermark(emitted));
        }
    }

    @Override
    public void processElement(StreamRecord<Row> record) throws Exception {
        Row row = record.getValue();
        output.collect(record);
        if (row.getField(reasonIndex) != null) {
            return;
        }
        Object ts = row.getField(tsIndex);
        int p = (Integer) row.getField(partitionIndex);
        if (ts == null || p < 0 || p >= partitions || slot[p] < 0) {
            return;
        }
        int i = slot[p];
        long t = (Long) ts;
        if (t <= max[i]) {
            return;
        }
        max[i] = t;
        long low = Long.MAX_VALUE;
        for (long m : max) {
            low = Math.min(low, m);
        }
        if (low == Long.MIN_VALUE) {
            return;
        }
        long mark = low - lateness;
        if (mark >= emitted + stepMs || emitted == Long.MIN_VALUE) {
            emitted = mark;
            output.emitWatermark(new Watermark(mark));
        }
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        if (mark.getTimestamp() == Long.MAX_VALUE) {  // the end of a bounded input
            output.emitWatermark(mark);
        }
    }
}
