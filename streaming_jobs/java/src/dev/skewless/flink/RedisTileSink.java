package dev.skewless.flink;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ScheduledFuture;
import org.apache.flink.api.common.operators.ProcessingTimeService;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.SimpleCounter;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;
import redis.clients.jedis.HostAndPort;
import redis.clients.jedis.util.JedisClusterCRC16;
import redis.clients.jedis.util.SafeEncoder;

/**
 * The Redis sink of the job's changelog (tile and progress rows; dead letters go to Kafka): rows are coalesced
 * per tile field and progress field in memory and written when {@code flush_rows} rows are pending, when the
 * {@code flush_ms} processing-time timer fires, before every checkpoint and at the end of a bounded input
 * ({@link SinkWriter#flush}). So nothing a checkpoint covers is only in memory (no state to restore), and a
 * replay after a restore writes the same tiles again: each tile field ({@code t:{H}:{start}} of the entity's
 * hash) is written by {@code TILE_CAS_LUA} only if its version (events applied to the tile) is at least the stored
 * one, so replays are idempotent; the script keeps the hash's manifest and prunes old tiles.
 *
 * <p>One flush: {@code EVALSHA} calls of up to {@code cas_keys} (entity, tile size) entries, every call's keys in
 * one hash slot on a Redis Cluster (many entities per call on a single Redis), pipelined per master
 * ({@link RedisNodes}); once every call is acknowledged and the masters written have passed the writes to a replica
 * ({@code WAIT}, where they have replicas), the {@code HSET} of the progress fields (their own slot). Before a
 * checkpoint completes, the progress write is confirmed on a replica too. Any error fails the flush (the task
 * restarts from the last checkpoint); nothing is dropped. The writer refuses a Redis whose {@code maxmemory-policy}
 * may evict keys (warns and goes on where {@code CONFIG GET} is denied).
 *
 * <p>Subtask 0 also writes the progress hash's {@code log_end} field about every second: the newest check of the
 * topic's offsets ({@link LogEndCheck}, on its own thread), with which readers tell a caught-up quiet partition from
 * one behind (skewless.core.staleness).
 */
public final class RedisTileSink implements Sink<Row> {
    private static final long serialVersionUID = 1L;
    private final String spec;

    /** {@code spec}: the JSON the Python side builds (streaming_jobs.job.sink_spec). */
    public RedisTileSink(String spec) {
        this.spec = spec;
    }

    @Override
    public SinkWriter<Row> createWriter(WriterInitContext context) throws IOException {
        return openWriter(parse(spec), context.getProcessingTimeService(),
            context.metricGroup().counter("skewless_rows_written"), context.getTaskInfo().getIndexOfThisSubtask() == 0);
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> parse(String spec) throws IOException {
        try {
            return (Map<String, Object>) Json.parse(spec);
        } catch (Json.Malformed e) {
            throw new IOException("bad sink spec: " + e.getMessage(), e);
        }
    }

    /** Where a writer's commands go: {@link RedisNodes}, or a recording fake in the tests ({@link #main}). */
    interface Store extends AutoCloseable {
        /** The key's hash slot on a cluster; the same value for every key on a single Redis. */
        int slot(String key);

        /** Send the commands; one reply per command (an error reply as an exception object). */
        List<Object> pipeline(List<RedisNodes.Command> commands) throws IOException;

        /** Every master written since the last call has passed the writes to a replica (where it has one). */
        void confirmReplicated() throws IOException;

        /** {@code SCRIPT LOAD} everywhere; the SHA1. */
        String script(String body) throws IOException;

        @Override
        void close();
    }

    /**
     * The spec's Redis, checked (eviction policy) and initialised (epoch, views' meta), and the store's epoch; with
     * {@code checkLogEnd} (subtask 0) and a topic in the spec, the offset checks of {@link LogEndCheck}.
     */
    @SuppressWarnings("unchecked")
    static Writer openWriter(Map<String, Object> spec, ProcessingTimeService time, Counter written, boolean checkLogEnd)
            throws IOException {
        RedisNodes nodes = RedisNodes.open((Map<String, Object>) spec.get("redis"));
        Writer writer = null;
        try {
            checkEvictionPolicy(nodes, TileEncoder.strings(spec.get("evicting_policies")));
            String epoch = initStore(nodes, (String) spec.get("epoch_key"), TileEncoder.strings(spec.get("meta_keys")),
                (Long) spec.get("applied_from_ms"), Boolean.TRUE.equals(spec.get("raise_applied_from")));
            writer = new Writer(spec, time, written, nodes, epoch);
            if (checkLogEnd && spec.get("topic") != null) {
                writer.checkLogEnd(new LogEndCheck((String) spec.get("bootstrap"),
                    (Map<String, Object>) spec.get("kafka_properties"), (String) spec.get("topic"),
                    ((Long) spec.get("partitions")).intValue(), (Long) spec.get("log_end_timeout_ms")));
            }
            return writer;
        } catch (IOException | RuntimeException e) {
            if (writer != null) {
                writer.close();  // its offset checks and the nodes
            } else {
                nodes.close();
            }
            throw e;
        }
    }

    /** Refuse a Redis that may evict keys (a whole entity hash evicted reads as an entity never seen). */
    private static void checkEvictionPolicy(RedisNodes redis, String[] evicting) throws IOException {
        for (HostAndPort master : redis.masters()) {
            Object r;
            try {
                r = redis.callOn(master, "CONFIG", "GET", "maxmemory-policy");
            } catch (IOException e) {  // denied (managed Redis): cannot check
                System.err.println("skewless sink: cannot read Redis maxmemory-policy (" + e.getMessage()
                    + "); make sure it is noeviction, or lost keys read as entities never seen");
                return;
            }
            if (r instanceof List && ((List<?>) r).size() >= 2) {
                String policy = SafeEncoder.encode((byte[]) ((List<?>) r).get(1));
                for (String p : evicting) {
                    if (p.equalsIgnoreCase(policy)) {
                        throw new IOException("Redis " + master + " maxmemory-policy is " + policy + ": it may evict keys, "
                            + "and an entity whose online state was evicted whole reads as one never seen. Set "
                            + "maxmemory-policy noeviction and give Redis enough memory");
                    }
                }
            }
        }
    }

    /**
     * The store's epoch (created if missing) and each view's meta ({@code applied_from_ms} set once; with
     * {@code raise}, raised to {@code appliedFromMs} if lower: the job lost records the topic no longer holds).
     */
    private static String initStore(RedisNodes redis, String epochKey, String[] metaKeys, long appliedFromMs,
                                    boolean raise) throws IOException {
        redis.call(epochKey, "SET", epochKey, newEpoch(), "NX");
        String epoch = SafeEncoder.encode((byte[]) redis.call(epochKey, "GET", epochKey));
        for (String meta : metaKeys) {
            redis.call(meta, "HSETNX", meta, "applied_from_ms", Long.toString(appliedFromMs));
            if (raise) {
                Object cur = redis.call(meta, "HGET", meta, "applied_from_ms");
                if (cur == null || Long.parseLong(SafeEncoder.encode((byte[]) cur)) < appliedFromMs) {
                    redis.call(meta, "HSET", meta, "applied_from_ms", Long.toString(appliedFromMs));
                }
            }
            redis.call(meta, "HSETNX", meta, "epoch", epoch);
        }
        return epoch;
    }

    private static String newEpoch() {
        byte[] b = new byte[10];
        new SecureRandom().nextBytes(b);
        String alphabet = "abcdefghijklmnopqrstuvwxyz234567";
        StringBuilder out = new StringBuilder(16);
        long bits = 0;
        int n = 0;
        for (byte x : b) {
            bits = (bits << 8) | (x & 0xff);
            n += 8;
            while (n >= 5) {
                out.append(alphabet.charAt((int) (bits >> (n - 5)) & 31));
                n -= 5;
            }
        }
        return out.toString();
    }

    /** Tile fields of one entity hash and tile size pending a write: tile start -> encoded value. */
    private static final class PendingKey {
        final String key;
        final TileEncoder.Output output;
        final TreeMap<Long, String> fields = new TreeMap<>();

        PendingKey(String key, TileEncoder.Output output) {
            this.key = key;
            this.output = output;
        }
    }

    static final class Writer implements SinkWriter<Row> {
        private final TileEncoder enc;
        private final String progressKey;
        private final int progressSlot;
        private final int flushRows;
        private final long flushMs;
        private final int casKeys;
        private final ProcessingTimeService time;
        private final Counter written;
        private final Store redis;
        private final String epoch;
        private final String sha;
        private final Map<String, PendingKey> tiles = new LinkedHashMap<>();
        private final Map<String, Object[]> progress = new LinkedHashMap<>();
        private int rows;
        private boolean armed;
        private LogEndCheck logEnd;

        Writer(Map<String, Object> spec, ProcessingTimeService time, Counter written, Store store, String epoch)
                throws IOException {
            this.enc = new TileEncoder(spec);
            this.progressKey = (String) spec.get("progress_key");
            this.flushRows = ((Long) spec.get("flush_rows")).intValue();
            this.flushMs = (Long) spec.get("flush_ms");
            this.casKeys = ((Long) spec.get("cas_keys")).intValue();
            this.time = time;
            this.written = written;
            this.redis = store;
            this.epoch = epoch;
            this.progressSlot = store.slot(progressKey);
            this.sha = store.script((String) spec.get("cas_script"));
        }

        /**
         * Write a first offset check now, then the newest one every {@link LogEndCheck#INTERVAL_MS} (a timer on the
         * task thread).
         */
        void checkLogEnd(LogEndCheck check) throws IOException {
            this.logEnd = check;
            writeLogEnd(check.start());
            armLogEnd();
        }

        private void writeLogEnd(String json) throws IOException {
            if (json != null) {
                check(redis.pipeline(List.of(new RedisNodes.Command(progressSlot, List.of("HSET", progressKey, "log_end", json)))));
            }
        }

        private void armLogEnd() {
            time.registerTimer(time.getCurrentProcessingTime() + LogEndCheck.INTERVAL_MS, t -> {
                if (logEnd == null) {
                    return;  // closed
                }
                writeLogEnd(logEnd.take());
                armLogEnd();
            });
        }

        @Override
        public void write(Row row, Context context) throws IOException {
            RowKind kind = row.getKind();
            if (kind == RowKind.UPDATE_BEFORE || kind == RowKind.DELETE) {
                return;  // upsert changelog: only +I/+U images carry values; tiles are never deleted
            }
            Object[] f = new Object[row.getArity()];
            for (int i = 0; i < f.length; i++) {
                f[i] = row.getField(i);
            }
            String k = (String) f[0];
            if ("T".equals(k)) {
                TileEncoder.Output out = enc.output((String) f[1], (Long) f[2]);
                String key = enc.tileKey(out, f);
                String slot = key + "|" + out.tileMs;
                PendingKey pending = tiles.get(slot);
                if (pending == null) {
                    pending = new PendingKey(key, out);
                    tiles.put(slot, pending);
                }
                pending.fields.put((Long) f[3 + enc.keyWidth], enc.tileValue(out, f, epoch));
            } else if ("P".equals(k)) {
                progress.put("p:" + f[3], f);
            } else {
                return;  // dead letters: the Kafka sink
            }
            rows++;
            if (rows >= flushRows) {
                flushAll();
            } else if (!armed) {
                armed = true;
                time.registerTimer(time.getCurrentProcessingTime() + flushMs, t -> {
                    armed = false;
                    flushAll();
                });
            }
        }

        /** Before a checkpoint and at the end of a bounded input: everything written and on a replica. */
        @Override
        public void flush(boolean endOfInput) throws IOException {
            flushAll();
            redis.confirmReplicated();
        }

        /** The pending tiles, acknowledged (and on a replica), then the progress fields that cover them. */
        private void flushAll() throws IOException {
            if (tiles.isEmpty() && progress.isEmpty()) {
                return;
            }
            if (!tiles.isEmpty()) {
                check(redis.pipeline(tileCommands()));
                tiles.clear();
            }
            if (!progress.isEmpty()) {
                redis.confirmReplicated();
                check(redis.pipeline(List.of(progressCommand())));
                progress.clear();
            }
            written.inc(rows);
            rows = 0;
        }

        private static void check(List<Object> replies) throws IOException {
            for (Object r : replies) {
                if (r instanceof Throwable) {
                    throw new IOException("redis refused a sink write: " + ((Throwable) r).getMessage());
                }
            }
        }

        /** {@code layout.tile_cas_args} per batch of up to {@code cas_keys} keys of one hash slot. */
        List<RedisNodes.Command> tileCommands() {
            Map<Integer, List<PendingKey>> bySlot = new TreeMap<>();
            for (PendingKey p : tiles.values()) {
                bySlot.computeIfAbsent(redis.slot(p.key), s -> new ArrayList<>()).add(p);
            }
            List<RedisNodes.Command> out = new ArrayList<>();
            List<String> keys = new ArrayList<>(casKeys);
            List<String> argv = new ArrayList<>();
            for (Map.Entry<Integer, List<PendingKey>> group : bySlot.entrySet()) {
                for (PendingKey p : group.getValue()) {
                    keys.add(p.key);
                    argv.add(Integer.toString(p.fields.size()));
                    argv.add(Long.toString(p.output.tileMs));
                    argv.add(Long.toString(p.output.retentionMs));
                    for (Map.Entry<Long, String> field : p.fields.entrySet()) {
                        argv.add(Long.toString(field.getKey()));
                        argv.add(field.getValue());
                    }
                    if (keys.size() == casKeys) {
                        out.add(evalsha(group.getKey(), keys, argv));
                    }
                }
                if (!keys.isEmpty()) {
                    out.add(evalsha(group.getKey(), keys, argv));
                }
            }
            return out;
        }

        private RedisNodes.Command evalsha(int slot, List<String> keys, List<String> argv) {
            List<String> c = new ArrayList<>(3 + keys.size() + argv.size());
            Collections.addAll(c, "EVALSHA", sha, Integer.toString(keys.size()));
            c.addAll(keys);
            c.addAll(argv);
            keys.clear();
            argv.clear();
            return new RedisNodes.Command(slot, c);
        }

        private RedisNodes.Command progressCommand() {
            long now = System.currentTimeMillis();
            List<String> hset = new ArrayList<>(2 + 2 * progress.size());
            hset.add("HSET");
            hset.add(progressKey);
            for (Map.Entry<String, Object[]> e : progress.entrySet()) {
                hset.add(e.getKey());
                hset.add(enc.progressValue(e.getValue(), epoch, now));
            }
            return new RedisNodes.Command(progressSlot, hset);
        }

        @Override
        public void close() {
            if (logEnd != null) {
                logEnd.close();
                logEnd = null;
            }
            redis.close();  // pending rows were flushed at the end of input, or the checkpoint replays them
        }
    }

    /**
     * Tests: a writer over a recording store ({@code RedisTileSink <spec JSON> <epoch> <cluster true|false>
     * <failing write, 0 for none>}): stdin holds changelog rows as JSON arrays ({@code TileEncoder}'s) and the
     * lines {@code CHECKPOINT} ({@link SinkWriter#flush}) and {@code TIMER} (the flush timer); stdout has one JSON
     * line per store call: {@code ["pipeline", [[slot, command, key...], ...]]}, {@code ["confirm"]}, and
     * {@code ["error", message]} where a flush failed.
     */
    public static void main(String[] args) throws Exception {
        Map<String, Object> spec = parse(args[0]);
        boolean cluster = Boolean.parseBoolean(args[2]);
        int failing = Integer.parseInt(args[3]);
        PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
        List<ProcessingTimeService.ProcessingTimeCallback> timers = new ArrayList<>();
        ProcessingTimeService time = new ProcessingTimeService() {
            @Override
            public long getCurrentProcessingTime() {
                return 0L;
            }

            @Override
            public ScheduledFuture<?> registerTimer(long t, ProcessingTimeCallback callback) {
                timers.add(callback);
                return null;
            }
        };
        Store store = new Store() {
            private int writes;

            @Override
            public int slot(String key) {
                return cluster ? JedisClusterCRC16.getSlot(key) : 0;
            }

            @Override
            public List<Object> pipeline(List<RedisNodes.Command> commands) throws IOException {
                StringBuilder b = new StringBuilder("[\"pipeline\",[");
                List<Object> replies = new ArrayList<>();
                for (RedisNodes.Command c : commands) {
                    b.append(replies.isEmpty() ? "[" : ",[").append(c.slot).append(',');
                    PyJson.string(b, c.args[0]);
                    int keys = "EVALSHA".equals(c.args[0]) ? Integer.parseInt(c.args[2]) : 1;
                    for (int i = 0; i < keys; i++) {
                        b.append(',');
                        PyJson.string(b, c.args["EVALSHA".equals(c.args[0]) ? 3 + i : 1]);
                    }
                    b.append(']');
                    replies.add(++writes == failing ? new IOException("injected failure") : (Object) 1L);
                }
                out.println(b.append("]]"));
                return replies;
            }

            @Override
            public void confirmReplicated() {
                out.println("[\"confirm\"]");
            }

            @Override
            public String script(String body) {
                return "sha";
            }

            @Override
            public void close() {
            }
        };
        Writer writer = new Writer(spec, time, new SimpleCounter(), store, args[1]);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            try {
                if ("CHECKPOINT".equals(line)) {
                    writer.flush(false);
                } else if ("TIMER".equals(line)) {
                    for (ProcessingTimeService.ProcessingTimeCallback t : new ArrayList<>(timers)) {
                        t.onProcessingTime(0L);
                    }
                    timers.clear();
                } else {
                    List<?> row = (List<?>) Json.parse(line);
                    Object[] f = new Object[row.size()];
                    for (int i = 0; i < f.length; i++) {
                        f[i] = row.get(i) == Json.NULL ? null : row.get(i);
                    }
                    writer.write(Row.ofKind(RowKind.INSERT, f), null);
                }
            } catch (IOException e) {
                StringBuilder b = new StringBuilder("[\"error\",");
                PyJson.string(b, e.getMessage());
                out.println(b.append(']'));
            }
        }
        out.flush();
    }
}
