package dev.skewless.flink;

import java.io.IOException;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.flink.api.common.operators.ProcessingTimeService;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.metrics.Counter;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;

/**
 * The Redis sink of the job's changelog (tile and progress rows; dead letters go to Kafka): rows are coalesced
 * per tile field and progress field in memory and written when {@code flush_rows} rows are pending, when the
 * {@code flush_ms} processing-time timer fires, before every checkpoint and at the end of a bounded input
 * ({@link SinkWriter#flush}). So nothing a checkpoint covers is only in memory (no state to restore), and a
 * replay after a restore writes the same tiles again: each tile field ({@code t:{H}:{start}} of the entity's
 * hash) is written by {@code TILE_CAS_LUA} only if its version (events applied to the tile) is at least the stored
 * one, so replays are idempotent; the script keeps the hash's manifest and prunes old tiles.
 * One flush is one pipeline: {@code EVALSHA} calls of up to {@code cas_keys} (entity, tile size) entries, then
 * {@code HSET} of the progress fields (after the tiles they cover). The writer refuses a Redis whose
 * {@code maxmemory-policy} may evict keys (warns and goes on where {@code CONFIG GET} is denied).
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
        try {
            @SuppressWarnings("unchecked")
            Map<String, Object> m = (Map<String, Object>) Json.parse(spec);
            return new Writer(m, context.getProcessingTimeService(),
                context.metricGroup().counter("skewless_rows_written"));
        } catch (Json.Malformed e) {
            throw new IOException("bad sink spec: " + e.getMessage(), e);
        }
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
        private final Map<String, Object> redisSpec;
        private final String progressKey;
        private final String casScript;
        private final int flushRows;
        private final long flushMs;
        private final int casKeys;
        private final ProcessingTimeService time;
        private final Counter written;
        private final Map<String, PendingKey> tiles = new LinkedHashMap<>();
        private final Map<String, Object[]> progress = new LinkedHashMap<>();
        private Resp redis;
        private String epoch;
        private String sha;
        private int rows;
        private boolean armed;

        Writer(Map<String, Object> spec, ProcessingTimeService time, Counter written) throws IOException {
            this.enc = new TileEncoder(spec);
            @SuppressWarnings("unchecked")
            Map<String, Object> redisSpec = (Map<String, Object>) spec.get("redis");
            this.redisSpec = redisSpec;
            this.progressKey = (String) spec.get("progress_key");
            this.casScript = (String) spec.get("cas_script");
            this.flushRows = ((Long) spec.get("flush_rows")).intValue();
            this.flushMs = (Long) spec.get("flush_ms");
            this.casKeys = ((Long) spec.get("cas_keys")).intValue();
            this.time = time;
            this.written = written;
            connect();
            checkEvictionPolicy(TileEncoder.strings(spec.get("evicting_policies")));
            initStore((String) spec.get("epoch_key"), TileEncoder.strings(spec.get("meta_keys")),
                (Long) spec.get("applied_from_ms"));
        }

        private void connect() throws IOException {
            redis = Resp.open(redisSpec, 60_000);
            sha = (String) redis.call("SCRIPT", "LOAD", casScript);
        }

        /** Refuse a Redis that may evict keys (a whole entity hash evicted reads as an entity never seen). */
        private void checkEvictionPolicy(String[] evicting) throws IOException {
            Object r;
            try {
                r = redis.call("CONFIG", "GET", "maxmemory-policy");
            } catch (IOException e) {  // denied (managed Redis): cannot check
                System.err.println("skewless sink: cannot read Redis maxmemory-policy (" + e.getMessage()
                    + "); make sure it is noeviction, or lost keys read as entities never seen");
                return;
            }
            if (r instanceof List && ((List<?>) r).size() >= 2) {
                String policy = String.valueOf(((List<?>) r).get(1));
                for (String p : evicting) {
                    if (p.equalsIgnoreCase(policy)) {
                        throw new IOException("Redis maxmemory-policy is " + policy + ": it may evict keys, and an "
                            + "entity whose online state was evicted whole reads as one never seen. Set "
                            + "maxmemory-policy noeviction and give Redis enough memory");
                    }
                }
            }
        }

        /** The store's epoch (created if missing) and each view's meta ({@code applied_from_ms} set once). */
        private void initStore(String epochKey, String[] metaKeys, long appliedFromMs) throws IOException {
            redis.call("SET", epochKey, newEpoch(), "NX");
            epoch = (String) redis.call("GET", epochKey);
            for (String meta : metaKeys) {
                redis.call("HSETNX", meta, "applied_from_ms", Long.toString(appliedFromMs));
                redis.call("HSETNX", meta, "epoch", epoch);
            }
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

        @Override
        public void flush(boolean endOfInput) throws IOException {
            flushAll();  // before a checkpoint and at the end of a bounded input
        }

        private void flushAll() throws IOException {
            if (tiles.isEmpty() && progress.isEmpty()) {
                return;
            }
            List<List<String>> commands = commands();
            List<Object> replies = send(commands);
            for (Object r : replies) {
                if (r instanceof Resp.Error && r.toString().startsWith("NOSCRIPT")) {
                    sha = (String) redis.call("SCRIPT", "LOAD", casScript);  // Redis restarted: load it again
                    replies = send(commands());
                    break;
                }
            }
            for (Object r : replies) {
                if (r instanceof Resp.Error) {
                    throw new IOException("redis refused a sink write: " + r);
                }
            }
            written.inc(rows);
            rows = 0;
            tiles.clear();
            progress.clear();
        }

        private List<Object> send(List<List<String>> commands) throws IOException {
            for (List<String> c : commands) {
                redis.command(c);
            }
            return redis.replies();
        }

        /** {@code layout.tile_cas_args} per batch of keys, then the progress fields. */
        private List<List<String>> commands() {
            List<List<String>> out = new ArrayList<>();
            List<String> keys = new ArrayList<>(casKeys);
            List<String> argv = new ArrayList<>();
            for (PendingKey p : tiles.values()) {
                keys.add(p.key);
                argv.add(Integer.toString(p.fields.size()));
                argv.add(Long.toString(p.output.tileMs));
                argv.add(Long.toString(p.output.retentionMs));
                for (Map.Entry<Long, String> field : p.fields.entrySet()) {
                    argv.add(Long.toString(field.getKey()));
                    argv.add(field.getValue());
                }
                if (keys.size() == casKeys) {
                    out.add(evalsha(keys, argv));
                    keys.clear();
                    argv.clear();
                }
            }
            if (!keys.isEmpty()) {
                out.add(evalsha(keys, argv));
            }
            if (!progress.isEmpty()) {
                long now = System.currentTimeMillis();
                List<String> hset = new ArrayList<>(2 + 2 * progress.size());
                hset.add("HSET");
                hset.add(progressKey);
                for (Map.Entry<String, Object[]> e : progress.entrySet()) {
                    hset.add(e.getKey());
                    hset.add(enc.progressValue(e.getValue(), epoch, now));
                }
                out.add(hset);
            }
            return out;
        }

        private List<String> evalsha(List<String> keys, List<String> argv) {
            List<String> c = new ArrayList<>(3 + keys.size() + argv.size());
            Collections.addAll(c, "EVALSHA", sha, Integer.toString(keys.size()));
            c.addAll(keys);
            c.addAll(argv);
            return c;
        }

        @Override
        public void close() throws IOException {
            if (redis != null) {
                redis.close();  // pending rows were flushed at the end of input, or the checkpoint replays them
            }
        }
    }
}
