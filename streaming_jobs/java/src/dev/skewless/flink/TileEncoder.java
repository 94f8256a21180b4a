package dev.skewless.flink;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.io.Serializable;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Changelog rows of the compiled job (kind, view, tile size, keys, tile start, version, c0..cN, all text
 * but the numbers) as the Redis and Kafka values the sink writes. The keys come from the spec the Python
 * side builds with {@code skewless.core.layout} (key prefix and suffix per tile output); the values follow
 * {@code layout.encode_tile_vector} with the laws' encoders, byte for byte ({@code main} is the test hook:
 * {@code tests/unit/test_java_sink.py} compares its output with layout's for generated rows).
 */
public final class TileEncoder implements Serializable {
    private static final long serialVersionUID = 1L;

    /** One tile hash of one view (a {@code TileOutput} of the compiler plus its layout key parts). */
    static final class Output implements Serializable {
        private static final long serialVersionUID = 1L;
        final String keyPrefix;
        final String keySuffix;
        final long tileMs;
        final long retentionMs;
        final String[] keyTypes;
        final String[] aggs;
        final String[] valueTypes;

        Output(Map<String, Object> spec) {
            keyPrefix = (String) spec.get("key_prefix");
            keySuffix = (String) spec.get("key_suffix");
            tileMs = (Long) spec.get("tile_ms");
            retentionMs = (Long) spec.get("retention_ms");
            keyTypes = strings(spec.get("key_types"));
            List<?> cols = (List<?>) spec.get("columns");
            aggs = new String[cols.size()];
            valueTypes = new String[cols.size()];
            for (int i = 0; i < cols.size(); i++) {
                List<?> c = (List<?>) cols.get(i);
                aggs[i] = (String) c.get(0);
                valueTypes[i] = c.get(1) == Json.NULL ? null : (String) c.get(1);
            }
        }
    }

    final int keyWidth;
    final int valueWidth;
    final String source;
    private final Map<String, Output> outputs = new HashMap<>();

    public TileEncoder(Map<String, Object> spec) {
        keyWidth = ((Long) spec.get("key_width")).intValue();
        valueWidth = ((Long) spec.get("value_width")).intValue();
        source = (String) spec.get("source");
        for (Object o : (List<?>) spec.get("outputs")) {
            @SuppressWarnings("unchecked")
            Map<String, Object> m = (Map<String, Object>) o;
            outputs.put(m.get("view") + "|" + m.get("tile_ms"), new Output(m));
        }
    }

    static String[] strings(Object list) {
        List<?> l = (List<?>) list;
        String[] out = new String[l.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = (String) l.get(i);
        }
        return out;
    }

    Output output(String view, long tileMs) {
        Output out = outputs.get(view + "|" + tileMs);
        if (out == null) {
            throw new IllegalStateException("changelog row of an unknown tile output " + view + " H=" + tileMs);
        }
        return out;
    }

    /** {@code layout.tile_key}: the output's prefix, the typed entity key (%-escaped strings), its suffix. */
    String tileKey(Output out, Object[] f) {
        StringBuilder b = new StringBuilder(out.keyPrefix.length() + 40).append(out.keyPrefix);
        for (int i = 0; i < out.keyTypes.length; i++) {
            if (i > 0) {
                b.append(',');
            }
            String k = (String) f[3 + i];
            if (k == null) {
                throw new IllegalStateException("changelog tile row without key " + i);
            }
            if ("int64".equals(out.keyTypes[i])) {
                b.append("i=").append(Long.parseLong(k));
            } else {
                b.append("s=");
                escapeKey(b, k);
            }
        }
        return b.append(out.keySuffix).toString();
    }

    private static void escapeKey(StringBuilder b, String s) {
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '%':
                    b.append("%25");
                    break;
                case ':':
                    b.append("%3A");
                    break;
                case '{':
                    b.append("%7B");
                    break;
                case '}':
                    b.append("%7D");
                    break;
                case ',':
                    b.append("%2C");
                    break;
                default:
                    b.append(c);
            }
        }
    }

    /** {@code layout.encode_tile_vector(version, epoch, decoded intermediates, aggs)} of one tile row. */
    String tileValue(Output out, Object[] f, String epoch) {
        long version = (Long) f[4 + keyWidth];
        StringBuilder b = new StringBuilder(96).append(version).append('|').append(epoch).append("|[");
        for (int i = 0; i < out.aggs.length; i++) {
            if (i > 0) {
                b.append(',');
            }
            String text = (String) f[5 + keyWidth + i];
            switch (out.aggs[i]) {
                case "count":
                    b.append(text == null ? 0L : Long.parseLong(text));
                    break;
                case "sum":
                    if (text == null) {
                        b.append('0');
                    } else {
                        sum(b, out.valueTypes[i], text);
                    }
                    break;
                case "avg": {
                    String t = text == null ? "0,0" : text;
                    int comma = t.indexOf(',');
                    long count = Long.parseLong(t.substring(comma + 1));
                    b.append('[');
                    if (count == 0) {
                        b.append('0');  // no value summed: the law's identity (0, 0)
                    } else {
                        sum(b, out.valueTypes[i], t.substring(0, comma));
                    }
                    b.append(',').append(count).append(']');
                    break;
                }
                case "min":
                case "max":
                    if (text == null) {
                        b.append("null");
                    } else {
                        typed(b, out.valueTypes[i], text);
                    }
                    break;
                case "last":
                    if (text == null) {
                        b.append("null");
                    } else {
                        b.append('[').append(Long.parseLong(text.substring(0, 16))).append(',')
                            .append(Long.parseLong(text.substring(16, 26))).append(',')
                            .append(Long.parseLong(text.substring(26, 45))).append(',');
                        typed(b, out.valueTypes[i], text.substring(45));
                        b.append(']');
                    }
                    break;
                default:
                    throw new IllegalStateException("aggregation " + out.aggs[i]);
            }
        }
        return b.append(']').toString();
    }

    /**
     * {@code laws._encode_sum} of a tile's exact sum: an int64 field's ({@code DECIMAL(38, 0)} text) as a JSON integer,
     * beyond int64 as {@code {"$int":"<digits>"}} (partial sums may leave int64, docs/semantics.md §4: the reader
     * finalizes the window's value); a decimal field's as the JSON string Python's {@code str(Decimal)} gives
     * ({@code BigDecimal.toString}: the same to-scientific-string rule).
     */
    private static StringBuilder sum(StringBuilder b, String type, String text) {
        if ("decimal".equals(type)) {
            return PyJson.string(b, new BigDecimal(text).toString());
        }
        BigInteger v = new BigInteger(text);
        if (v.bitLength() < 64) {  // fits int64
            return b.append(v.toString());
        }
        return b.append("{\"$int\":\"").append(v.toString()).append("\"}");
    }

    /** {@code laws.encode_value} of the typed changelog text (the sink's {@code _typed_value}). */
    private static void typed(StringBuilder b, String type, String text) {
        if ("int64".equals(type) || "timestamp".equals(type)) {
            b.append(Long.parseLong(text));
        } else if ("float64".equals(type)) {
            b.append(PyJson.floatRepr(Double.parseDouble(text)));
        } else if ("bool".equals(type)) {
            b.append("true".equalsIgnoreCase(text) ? "true" : "false");
        } else {
            PyJson.string(b, text);
        }
    }

    /** The progress hash field {@code p:<partition>} and its JSON (keys sorted, as {@code laws.dumps}). */
    String progressValue(Object[] f, String epoch, long writtenMs) {
        int v = 5 + keyWidth;
        String maxEvent = (String) f[v];
        return new StringBuilder(200)
            .append("{\"admitted_or_duplicate\":").append(Long.parseLong((String) f[v + 2]))
            .append(",\"dedup_entries\":").append(Long.parseLong((String) f[v + 7]))
            .append(",\"duplicate\":").append(Long.parseLong((String) f[v + 6]))
            .append(",\"epoch\":").append(PyJson.string(new StringBuilder(), epoch))
            .append(",\"future\":").append(Long.parseLong((String) f[v + 4]))
            .append(",\"late\":").append(Long.parseLong((String) f[v + 5]))
            .append(",\"malformed\":").append(Long.parseLong((String) f[v + 3]))
            .append(",\"max_event_ms\":").append(maxEvent == null ? "null" : String.valueOf(Long.parseLong(maxEvent)))
            .append(",\"offset\":").append((Long) f[4 + keyWidth])
            .append(",\"records\":").append(Long.parseLong((String) f[v + 1]))
            .append(",\"written_ms\":").append(writtenMs)
            .append('}').toString();
    }

    /** Message key {@code partition:offset} of a dead-letter row. */
    String deadLetterKey(Object[] f) {
        return f[3] + ":" + f[3 + keyWidth];
    }

    /** The dead-letter record: source, partition, offset, reason, detail, payload (text if UTF-8), base64. */
    String deadLetterValue(Object[] f) {
        int v = 5 + keyWidth;
        String reason = (String) f[v];
        String detail = (String) f[v + 1];
        String b64 = (String) f[v + 2];
        String recordMs = (String) f[v + 3];
        String payload = Admission.strictUtf8(b64 == null ? new byte[0] : Base64.getDecoder().decode(b64));
        StringBuilder b = new StringBuilder(256).append("{\"detail\":");
        optString(b, detail);
        b.append(",\"offset\":").append((Long) f[3 + keyWidth]);
        b.append(",\"partition\":").append(Long.parseLong((String) f[3]));
        b.append(",\"payload\":");
        optString(b, payload);
        b.append(",\"payload_b64\":");
        optString(b, b64);
        b.append(",\"reason\":");
        optString(b, reason);
        b.append(",\"record_timestamp_ms\":").append(recordMs == null ? "null" : String.valueOf(Long.parseLong(recordMs)));
        b.append(",\"source\":");
        PyJson.string(b, source);
        return b.append('}').toString();
    }

    private static void optString(StringBuilder b, String s) {
        if (s == null) {
            b.append("null");
        } else {
            PyJson.string(b, s);
        }
    }

    /**
     * Test hook: {@code java -cp <jar> dev.skewless.flink.TileEncoder '<spec>' '<epoch>'} reads changelog rows
     * as JSON arrays (one per line) and prints per row a JSON array: {@code ["T", key, start, value]},
     * {@code ["P", field, value]} (written_ms 0) or {@code ["D", key, value]}; {@code ["E", message]} for a
     * row the sink refuses; float64 inputs as {@code ["F", text]} print {@code ["F", repr]}.
     */
    public static void main(String[] args) throws Exception {
        @SuppressWarnings("unchecked")
        TileEncoder enc = new TileEncoder((Map<String, Object>) Json.parse(args[0]));
        String epoch = args[1];
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
        String line;
        while ((line = in.readLine()) != null) {
            List<?> row = (List<?>) Json.parse(line);
            Object[] f = new Object[row.size()];
            for (int i = 0; i < f.length; i++) {
                f[i] = row.get(i) == Json.NULL ? null : row.get(i);
            }
            StringBuilder b = new StringBuilder("[");
            try {
                switch ((String) f[0]) {
                    case "T": {
                        Output o = enc.output((String) f[1], (Long) f[2]);
                        String value = enc.tileValue(o, f, epoch);
                        b.append("\"T\",");
                        PyJson.string(b, enc.tileKey(o, f)).append(',').append((Long) f[3 + enc.keyWidth]).append(',');
                        PyJson.string(b, value);
                        break;
                    }
                    case "P":
                        b.append("\"P\",");
                        PyJson.string(b, "p:" + f[3]).append(',');
                        PyJson.string(b, enc.progressValue(f, epoch, 0L));
                        break;
                    case "D":
                        b.append("\"D\",");
                        PyJson.string(b, enc.deadLetterKey(f)).append(',');
                        PyJson.string(b, enc.deadLetterValue(f));
                        break;
                    case "F":
                        b.append("\"F\",");
                        PyJson.string(b, PyJson.floatRepr(Double.parseDouble((String) f[1])));
                        break;
                    default:
                        throw new IllegalStateException("kind " + f[0]);
                }
            } catch (RuntimeException e) {
                b = new StringBuilder("[\"E\",");
                PyJson.string(b, e.getClass().getSimpleName() + ": " + e.getMessage());
            }
            out.println(b.append(']'));
        }
        out.flush();
    }
}
