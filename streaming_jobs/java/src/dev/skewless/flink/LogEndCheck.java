package dev.skewless.flink;

import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.admin.Admin;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.flink.kafka.shaded.org.apache.kafka.common.TopicPartition;

/**
 * The topic's offsets, checked about every {@link #INTERVAL_MS} on a daemon thread (off the task thread; every
 * request bounded by {@code timeoutMs}): per partition the first offset held and the log end offset, as Kafka answered
 * a request sent at {@code checked_ms}. The sink writes the newest check into the progress hash's {@code log_end}
 * field ({@link #take}); readers count a partition whose applied offset + 1 reached that log end as current up to
 * {@code checked_ms} (skewless.core.staleness), so a caught-up quiet partition does not make a view stale, and a
 * partition behind is bounded by its newest applied event. A failed check is retried at the next interval (the
 * field then ages, and readers with it: never {@code present} when unsure).
 */
final class LogEndCheck implements AutoCloseable {
    static final long INTERVAL_MS = 1000L;
    private final Admin admin;
    private final String topic;
    private final int partitions;
    private final long timeoutMs;
    private final Thread thread;
    private volatile String latest;
    private volatile boolean closed;

    LogEndCheck(String bootstrap, Map<String, Object> kafkaProperties, String topic, int partitions, long timeoutMs) {
        Properties props = new Properties();
        if (kafkaProperties != null) {
            kafkaProperties.forEach((k, v) -> props.setProperty(k, String.valueOf(v)));
        }
        props.setProperty("bootstrap.servers", bootstrap);
        props.setProperty("default.api.timeout.ms", Long.toString(timeoutMs));
        props.setProperty("client.id", "skewless-log-end-" + topic);
        this.admin = Admin.create(props);
        this.topic = topic;
        this.partitions = partitions;
        this.timeoutMs = timeoutMs;
        this.thread = new Thread(this::loop, "skewless-log-end-" + topic);
        this.thread.setDaemon(true);
    }

    /**
     * One check now, on the caller's thread (the writer's open: a restored job replaces the check its predecessor
     * left before it writes any progress), then the checks every interval on the daemon thread. The first check's
     * JSON, or null if it failed (warned; the thread retries).
     */
    String start() {
        String first = null;
        try {
            first = check(System.currentTimeMillis());
        } catch (Exception e) {
            warn(e);
        }
        thread.start();
        return first;
    }

    private void warn(Exception e) {
        System.err.println("skewless sink: cannot read the offsets of " + topic + " (" + e
            + "); its partitions count as behind until a check succeeds");
    }

    /** The newest check's JSON not taken yet ({@code {"checked_ms": T, "partitions": {"<p>": [start, end]}}}), or null. */
    String take() {
        String out = latest;
        latest = null;
        return out;
    }

    private void loop() {
        boolean warned = false;
        while (!closed) {
            try {
                Thread.sleep(INTERVAL_MS);
            } catch (InterruptedException e) {
                return;
            }
            long sent = System.currentTimeMillis();
            try {
                latest = check(sent);
                warned = false;
            } catch (Exception e) {
                if (!closed && !warned) {
                    warn(e);
                    warned = true;
                }
            }
        }
    }

    private String check(long sentMs) throws Exception {
        Map<TopicPartition, OffsetSpec> earliest = new HashMap<>();
        Map<TopicPartition, OffsetSpec> latestSpec = new HashMap<>();
        for (int p = 0; p < partitions; p++) {
            earliest.put(new TopicPartition(topic, p), OffsetSpec.earliest());
            latestSpec.put(new TopicPartition(topic, p), OffsetSpec.latest());
        }
        Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> starts =
            admin.listOffsets(earliest).all().get(timeoutMs, TimeUnit.MILLISECONDS);
        Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> ends =
            admin.listOffsets(latestSpec).all().get(timeoutMs, TimeUnit.MILLISECONDS);
        StringBuilder b = new StringBuilder(64 + 32 * partitions).append("{\"checked_ms\":").append(sentMs)
            .append(",\"partitions\":{");
        for (int p = 0; p < partitions; p++) {
            TopicPartition tp = new TopicPartition(topic, p);
            b.append(p == 0 ? "\"" : ",\"").append(p).append("\":[").append(starts.get(tp).offset()).append(',')
                .append(ends.get(tp).offset()).append(']');
        }
        return b.append("}}").toString();
    }

    @Override
    public void close() {
        closed = true;
        thread.interrupt();
        admin.close(java.time.Duration.ofMillis(timeoutMs));
    }
}
