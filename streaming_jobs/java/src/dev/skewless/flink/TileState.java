package dev.skewless.flink;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The tile aggregates of a source job (docs/streaming.md, "Tile state"): per (output, entity key, tile start) an
 * accumulator whose changelog values are exactly what the Flink SQL aggregates {@code CAST(COUNT(*) FILTER ..
 * AS STRING)}, {@code CAST(SUM(..) AS STRING)}, ... of skewless.core.sql's Flink laws gave. The SQL side
 * computes per expanded row one argument per value column (its contribution as text, null when the filter
 * fails or the field is null); this class folds them.
 *
 * <p>An accumulator is a {@code String[]}: slot 0 the tile version (rows applied), then one slot per column
 * (two for AVG: sum, count). Its state is released once {@link #releaseAt} (tile end + the longest retention
 * reading the tile) is at or below the low watermark min over partitions of (M(p) - L): no admissible event can
 * reach the tile again, so its version never restarts.
 */
public final class TileState {
    /** How one value column folds its arguments. */
    public enum Kind {
        COUNT, SUM_INT, SUM_DEC, AVG_INT, AVG_DEC, MIN_LONG, MIN_DOUBLE, MAX_LONG, MAX_DOUBLE, LAST;

        int slots() {
            return this == AVG_INT || this == AVG_DEC ? 2 : 1;
        }
    }

    /** One tile hash of one view (streaming_jobs.flink_compiler.TileOutput). */
    public static final class Output {
        public final String view;
        public final long tileMs;
        public final long retentionMs;
        final Kind[] kinds;
        final int[] slot;  // column -> its first slot in the accumulator
        final int size;
        /** In a contributions row (one per event): the columns of this output's entity key, and of its first argument. */
        final int[] keyCols;
        final int argCol;

        Output(String view, long tileMs, long retentionMs, Kind[] kinds, int[] keyCols, int argCol) {
            this.view = view;
            this.tileMs = tileMs;
            this.retentionMs = retentionMs;
            this.kinds = kinds;
            this.keyCols = keyCols;
            this.argCol = argCol;
            this.slot = new int[kinds.length];
            int s = 1;
            for (int i = 0; i < kinds.length; i++) {
                slot[i] = s;
                s += kinds[i].slots();
            }
            this.size = s;
        }
    }

    public final Output[] outputs;
    public final int keyWidth;
    public final int valueWidth;

    /**
     * {@code spec}: JSON {@code {"key_width": w, "value_width": v, "outputs": [{"view", "tile_ms", "retention_ms",
     * "kinds": ["COUNT", ...], "key_cols": [..], "arg_col": n}]}} (streaming_jobs.flink_compiler.FlinkSourceJob.tile_spec;
     * the last two place the output in the contributions row, optional where no such row is read).
     */
    @SuppressWarnings("unchecked")
    public TileState(String spec) {
        Map<String, Object> m;
        try {
            m = (Map<String, Object>) Json.parse(spec);
        } catch (Json.Malformed e) {
            throw new IllegalArgumentException("bad tile spec: " + e.getMessage(), e);
        }
        keyWidth = ((Long) m.get("key_width")).intValue();
        valueWidth = ((Long) m.get("value_width")).intValue();
        List<Object> outs = (List<Object>) m.get("outputs");
        outputs = new Output[outs.size()];
        for (int j = 0; j < outputs.length; j++) {
            Map<String, Object> o = (Map<String, Object>) outs.get(j);
            List<Object> names = (List<Object>) o.get("kinds");
            Kind[] kinds = new Kind[names.size()];
            for (int i = 0; i < kinds.length; i++) {
                kinds[i] = Kind.valueOf((String) names.get(i));
            }
            List<Object> cols = (List<Object>) o.getOrDefault("key_cols", List.of());
            int[] keyCols = new int[cols.size()];
            for (int i = 0; i < keyCols.length; i++) {
                keyCols[i] = ((Long) cols.get(i)).intValue();
            }
            int argCol = ((Long) o.getOrDefault("arg_col", -1L)).intValue();
            outputs[j] = new Output((String) o.get("view"), (Long) o.get("tile_ms"), (Long) o.get("retention_ms"), kinds,
                keyCols, argCol);
        }
    }

    /** Event time at which the state of output {@code out}'s tile starting at {@code tileStart} may be released. */
    public long releaseAt(int out, long tileStart) {
        Output o = outputs[out];
        long end = tileStart + o.tileMs;
        long at = end + o.retentionMs;
        return at < end ? Long.MAX_VALUE : at;  // saturate
    }

    /** A new accumulator of output {@code out} (no row applied). */
    public String[] create(int out) {
        Output o = outputs[out];
        String[] acc = new String[o.size];
        acc[0] = "0";
        for (int i = 0; i < o.kinds.length; i++) {
            Kind k = o.kinds[i];
            if (k == Kind.COUNT) {
                acc[o.slot[i]] = "0";
            } else if (k == Kind.AVG_INT || k == Kind.AVG_DEC) {
                acc[o.slot[i] + 1] = "0";
            }
        }
        return acc;
    }

    /**
     * One tile's fold over a bundle of rows ({@link TilePreAggregate}): the version, counts and int64 sums as longs,
     * the rest as the arguments' own texts, so a row allocates nothing; {@link #accumulator} turns it into the tile's
     * accumulator over those rows (the keyed side merges it, {@link #merge}).
     */
    public static final class Partial {
        final int out;
        long version;
        final long[] n;  // per column: COUNT's count, AVG's count
        final long[] sum;  // per column: an int sum while it fits in int64
        final boolean[] has;  // per column: the int sum has a term
        final boolean[] big;  // per column: the int sum left int64 (text holds it)
        final String[] text;  // per column: decimal or big int sum, MIN/MAX/LAST value

        Partial(int out, int columns) {
            this.out = out;
            n = new long[columns];
            sum = new long[columns];
            has = new boolean[columns];
            big = new boolean[columns];
            text = new String[columns];
        }
    }

    /** An empty {@link Partial} of output {@code out}. */
    public Partial partial(int out) {
        return new Partial(out, outputs[out].kinds.length);
    }

    /** Apply one row: {@code args.get(i)} is value column i's argument (null: the row does not count). */
    public void add(Partial p, Args args) {
        Output o = outputs[p.out];
        p.version++;
        for (int i = 0; i < o.kinds.length; i++) {
            String a = args.get(i);
            if (a == null) {
                continue;
            }
            String cur = p.text[i];
            switch (o.kinds[i]) {
                case COUNT:
                    p.n[i]++;
                    break;
                case AVG_INT:
                    p.n[i]++;
                    // fall through: the sum
                case SUM_INT:
                    if (!p.big[i] && a.length() < 19) {
                        long v = Long.parseLong(a);
                        long r = p.sum[i] + v;
                        if (((p.sum[i] ^ r) & (v ^ r)) >= 0) {  // no int64 overflow
                            p.sum[i] = r;
                            p.has[i] = true;
                            break;
                        }
                    }
                    p.text[i] = sum(p.big[i] ? cur : p.has[i] ? Long.toString(p.sum[i]) : null, a);
                    p.big[i] = true;
                    p.has[i] = true;
                    break;
                case AVG_DEC:
                    p.n[i]++;
                    // fall through: the sum
                case SUM_DEC:
                    p.text[i] = sum(cur, a);
                    break;
                case MIN_LONG:
                    p.text[i] = cur == null || Long.parseLong(a) < Long.parseLong(cur) ? a : cur;
                    break;
                case MAX_LONG:
                    p.text[i] = cur == null || Long.parseLong(a) > Long.parseLong(cur) ? a : cur;
                    break;
                case MIN_DOUBLE:
                    p.text[i] = cur == null || Double.parseDouble(a) < Double.parseDouble(cur) ? a : cur;
                    break;
                case MAX_DOUBLE:
                    p.text[i] = cur == null || Double.parseDouble(a) > Double.parseDouble(cur) ? a : cur;
                    break;
                case LAST:
                    p.text[i] = cur == null || a.compareTo(cur) > 0 ? a : cur;
                    break;
                default:
                    throw new IllegalStateException("unknown kind " + o.kinds[i]);
            }
        }
    }

    /** The accumulator of a partial's rows (version, then per column its slots, as {@link #create} lays them out). */
    public String[] accumulator(Partial p) {
        Output o = outputs[p.out];
        String[] acc = create(p.out);
        acc[0] = Long.toString(p.version);
        for (int i = 0; i < o.kinds.length; i++) {
            int s = o.slot[i];
            switch (o.kinds[i]) {
                case COUNT:
                    acc[s] = Long.toString(p.n[i]);
                    break;
                case AVG_INT:
                    acc[s + 1] = Long.toString(p.n[i]);
                    // fall through: the sum
                case SUM_INT:
                    acc[s] = p.big[i] ? p.text[i] : p.has[i] ? Long.toString(p.sum[i]) : null;
                    break;
                case AVG_DEC:
                    acc[s + 1] = Long.toString(p.n[i]);
                    acc[s] = p.text[i];
                    break;
                default:
                    acc[s] = p.text[i];
            }
        }
        return acc;
    }

    /**
     * Merge {@code part} (an accumulator of the same output and tile over later rows, e.g. a bundle's
     * pre-aggregate) into {@code acc}: the result is the accumulator of both row sequences, {@code acc}'s first.
     */
    public void merge(int out, String[] acc, String[] part) {
        Output o = outputs[out];
        acc[0] = Long.toString(Long.parseLong(acc[0]) + Long.parseLong(part[0]));
        for (int i = 0; i < o.kinds.length; i++) {
            int s = o.slot[i];
            String a = part[s];
            String cur = acc[s];
            switch (o.kinds[i]) {
                case COUNT:
                    acc[s] = Long.toString(Long.parseLong(cur) + Long.parseLong(a));
                    break;
                case AVG_INT:
                case AVG_DEC:
                    acc[s + 1] = Long.toString(Long.parseLong(acc[s + 1]) + Long.parseLong(part[s + 1]));
                    // fall through: the sum slot
                case SUM_INT:
                case SUM_DEC:
                    if (a != null) {
                        acc[s] = sum(cur, a);
                    }
                    break;
                case MIN_LONG:
                    acc[s] = a == null || (cur != null && Long.parseLong(a) >= Long.parseLong(cur)) ? cur : a;
                    break;
                case MAX_LONG:
                    acc[s] = a == null || (cur != null && Long.parseLong(a) <= Long.parseLong(cur)) ? cur : a;
                    break;
                case MIN_DOUBLE:
                    acc[s] = a == null || (cur != null && !(Double.parseDouble(a) < Double.parseDouble(cur))) ? cur : a;
                    break;
                case MAX_DOUBLE:
                    acc[s] = a == null || (cur != null && !(Double.parseDouble(a) > Double.parseDouble(cur))) ? cur : a;
                    break;
                case LAST:
                    acc[s] = a == null || (cur != null && a.compareTo(cur) <= 0) ? cur : a;
                    break;
                default:
                    throw new IllegalStateException("unknown kind " + o.kinds[i]);
            }
        }
    }

    /** Exact sum of two integer or decimal texts of one scale (Flink's DECIMAL(38, s) SUM, as text). */
    static String sum(String cur, String a) {
        if (cur == null) {
            return a;
        }
        if (cur.indexOf('.') < 0 && a.indexOf('.') < 0 && cur.length() < 19 && a.length() < 19) {
            return Long.toString(Long.parseLong(cur) + Long.parseLong(a));  // both below 10^18: no overflow
        }
        return new BigDecimal(cur).add(new BigDecimal(a)).toPlainString();
    }

    /** The version of an accumulator (rows applied to the tile). */
    public static long version(String[] acc) {
        return Long.parseLong(acc[0]);
    }

    /** The changelog's value columns c0..c{value_width - 1} of an accumulator. */
    public String[] values(int out, String[] acc) {
        Output o = outputs[out];
        String[] c = new String[valueWidth];
        for (int i = 0; i < o.kinds.length; i++) {
            int s = o.slot[i];
            Kind k = o.kinds[i];
            c[i] = k == Kind.AVG_INT || k == Kind.AVG_DEC ? (acc[s] == null ? "0" : acc[s]) + "," + acc[s + 1] : acc[s];
        }
        return c;
    }

    /** Value column arguments of one row. */
    public interface Args {
        String get(int column);
    }

    /**
     * Tests: args {@code <spec>}; stdin one JSON array {@code [out, key, tile_start, arg0, arg1, ...]} per expanded
     * admitted row, {@code ["flush"]} (the rows since the last flush were folded into per-tile partial accumulators,
     * as {@link TilePreAggregate} does; they are merged now), or {@code ["release", low watermark]} (after a flush);
     * stdout per tile row {@code [out, key, tile_start, version, c0, ...]} in first-seen order, then the number of
     * live accumulators.
     */
    public static void main(String[] argv) throws Exception {
        TileState tiles = new TileState(argv[0]);
        Map<String, Object[]> live = new LinkedHashMap<>();
        Map<String, Object[]> partials = new LinkedHashMap<>();
        StringBuilder out = new StringBuilder();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = in.readLine()) != null; ) {
            List<?> row = (List<?>) Json.parse(line);
            if ("flush".equals(row.get(0)) || "release".equals(row.get(0))) {
                for (Map.Entry<String, Object[]> e : partials.entrySet()) {
                    Object[] p = e.getValue();
                    Object[] v = live.get(e.getKey());
                    String[] acc = tiles.accumulator((Partial) p[3]);
                    if (v == null) {
                        live.put(e.getKey(), new Object[] {p[0], p[1], p[2], acc});
                    } else {
                        tiles.merge((Integer) v[0], (String[]) v[3], acc);
                    }
                }
                partials.clear();
            }
            if ("flush".equals(row.get(0))) {
                continue;
            }
            if ("release".equals(row.get(0))) {
                long low = (Long) row.get(1);
                live.values().removeIf(v -> tiles.releaseAt((Integer) v[0], (Long) v[2]) <= low);
                continue;
            }
            int o = ((Long) row.get(0)).intValue();
            String key = (String) row.get(1);
            long start = (Long) row.get(2);
            String id = o + "\u0000" + key + "\u0000" + start;
            Object[] v = partials.computeIfAbsent(id, k -> new Object[] {o, key, start, tiles.partial(o)});
            tiles.add((Partial) v[3], i -> row.get(3 + i) == Json.NULL ? null : String.valueOf(row.get(3 + i)));
        }
        for (Map.Entry<String, Object[]> e : partials.entrySet()) {
            Object[] v = live.get(e.getKey());
            Object[] p = e.getValue();
            String[] acc = tiles.accumulator((Partial) p[3]);
            if (v == null) {
                live.put(e.getKey(), new Object[] {p[0], p[1], p[2], acc});
            } else {
                tiles.merge((Integer) v[0], (String[]) v[3], acc);
            }
        }
        for (Object[] v : live.values()) {
            String[] acc = (String[]) v[3];
            StringBuilder line = PyJson.string(new StringBuilder("[").append(v[0]).append(','), (String) v[1])
                .append(',').append(v[2]).append(',').append(version(acc));
            for (String c : tiles.values((Integer) v[0], acc)) {
                if (c == null) {
                    line.append(",null");
                } else {
                    PyJson.string(line.append(','), c);
                }
            }
            out.append(line).append("]\n");
        }
        out.append(live.size()).append('\n');
        System.out.print(out);
    }
}
