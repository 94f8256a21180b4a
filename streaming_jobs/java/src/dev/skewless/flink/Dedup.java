package dev.skewless.flink;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

/**
 * Keep-first de-duplication of one Kafka partition's admissible rows (admission rule 4, docs/semantics.md §6)
 * with state bounded by event time. An entry is (event id, ts); M is the partition's running maximum event
 * time over admissible rows and L the source's allowed lateness. An entry with ts &lt; M - L is dropped: any
 * later copy of it is late (rule 3) and never reaches the check. Entries are swept when the oldest one
 * possibly live is at least {@code sweepWidth} = max(L, 1 s) behind M - L, so live entries always have
 * ts in [M - L - sweepWidth, M] and a sweep's cost (one pass over the live entries) is paid once per
 * sweepWidth of event-time progress. Only the partition's own rows move M: a quiet partition keeps its entries.
 *
 * <p>The per-partition state is a {@link Store} (Flink keyed MapState in {@link DedupFunction}, a HashMap in
 * {@link #main}) and three scalars {@code [max, low, live]}: the running max (Long.MIN_VALUE before the first
 * row), a lower bound of the live entries' ts (Long.MAX_VALUE when none) and the live entry count.
 */
public final class Dedup {
    public static final int MAX = 0;
    public static final int LOW = 1;
    public static final int LIVE = 2;

    /** One partition's entries: entry key -> ts. */
    public interface Store {
        boolean contains(String key) throws Exception;

        void put(String key, long ts) throws Exception;

        /** Every entry; {@code remove()} on the iterator deletes it. */
        Iterator<Map.Entry<String, Long>> entries() throws Exception;
    }

    private final long lateness;
    private final long sweepWidth;

    public Dedup(long latenessMs) {
        if (latenessMs < 0) {
            throw new IllegalArgumentException("allowed lateness must be >= 0 ms, got " + latenessMs);
        }
        this.lateness = latenessMs;
        this.sweepWidth = Math.max(latenessMs, 1000L);
    }

    /** Scalars of a partition that has seen no row. */
    public static long[] initial() {
        return new long[] {Long.MIN_VALUE, Long.MAX_VALUE, 0L};
    }

    static String entryKey(String id, long ts) {
        return id == null ? ts + "#" : ts + ":" + id;
    }

    /** True if the rule-3 check (the ordered view's) calls a row late: ts &lt; M - L (used by {@link #main}). */
    public boolean late(long[] s, long ts) {
        return s[MAX] != Long.MIN_VALUE && ts < s[MAX] - lateness;
    }

    /** An admissible (not malformed, future or late) row: true if it is a copy of an earlier one. */
    public boolean duplicate(Store store, long[] s, String id, long ts) throws Exception {
        String key = entryKey(id, ts);
        boolean copy = store.contains(key);
        if (!copy) {
            store.put(key, ts);
            s[LIVE]++;
            s[LOW] = Math.min(s[LOW], ts);
        }
        s[MAX] = Math.max(s[MAX], ts);
        long horizon = s[MAX] - lateness;  // entries below it can only be matched by late copies
        if (s[LOW] != Long.MAX_VALUE && horizon - s[LOW] >= sweepWidth) {
            sweep(store, s, horizon);
        }
        return copy;
    }

    private static void sweep(Store store, long[] s, long horizon) throws Exception {
        long low = Long.MAX_VALUE;
        long live = 0;
        for (Iterator<Map.Entry<String, Long>> it = store.entries(); it.hasNext(); ) {
            long ts = it.next().getValue();
            if (ts < horizon) {
                it.remove();
            } else {
                low = Math.min(low, ts);
                live++;
            }
        }
        s[LOW] = low;
        s[LIVE] = live;
    }

    /** A Store over a HashMap (tests, {@link #main}). */
    public static final class MemoryStore implements Store {
        private final Map<String, Long> map = new HashMap<>();

        @Override
        public boolean contains(String key) {
            return map.containsKey(key);
        }

        @Override
        public void put(String key, long ts) {
            map.put(key, ts);
        }

        @Override
        public Iterator<Map.Entry<String, Long>> entries() {
            return map.entrySet().iterator();
        }
    }

    /**
     * Tests: args {@code <lateness ms>}; stdin one JSON array {@code [partition, id or null, ts]} per row that
     * passed rules 1-2, in offset order per partition; stdout per row {@code outcome live} with outcome
     * {@code late}, {@code duplicate} or {@code admitted} and live the partition's entry count after it.
     */
    public static void main(String[] args) throws Exception {
        Dedup dedup = new Dedup(Long.parseLong(args[0]));
        Map<Long, MemoryStore> stores = new HashMap<>();
        Map<Long, long[]> scalars = new HashMap<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        StringBuilder out = new StringBuilder();
        for (String line; (line = in.readLine()) != null; ) {
            List<?> row = (List<?>) Json.parse(line);
            long p = ((Number) row.get(0)).longValue();
            String id = row.get(1) == Json.NULL ? null : (String) row.get(1);
            long ts = ((Number) row.get(2)).longValue();
            MemoryStore store = stores.computeIfAbsent(p, k -> new MemoryStore());
            long[] s = scalars.computeIfAbsent(p, k -> initial());
            String outcome = dedup.late(s, ts) ? "late" : dedup.duplicate(store, s, id, ts) ? "duplicate" : "admitted";
            out.append(outcome).append(' ').append(s[LIVE]).append('\n');
        }
        System.out.print(out);
        System.out.flush();
    }
}
