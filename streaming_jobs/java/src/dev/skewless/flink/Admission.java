package dev.skewless.flink;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.time.LocalDateTime;
import java.time.YearMonth;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Admission rule 1 of {@code skewless/core/admission.py} ("malformed") for one source, driven by a spec the
 * Flink compiler writes from the source's JSON Schema: strict UTF-8 and JSON ({@link Json}), the schema's
 * keywords as {@code jsonschema} checks them ({@code required}, {@code type}, {@code minLength},
 * {@code maxLength}, {@code pattern}, {@code enum}, {@code minimum}, {@code maximum}, {@code format}
 * date-time/decimal), the event time ({@code parse_event_time}) and the id/key fields ({@code _key_value}).
 * No feature logic: it also returns the typed text of the fields the job reads.
 *
 * <p>{@link #classify} returns {@code [malformed detail or null, event time ms, typed event id, field...]}.
 * {@code main} reads {@code base64} payloads (one a line, {@code -} for none) and prints the results as
 * JSON lines, for the table-driven tests against admission.py.
 */
public final class Admission {
    private static final long MAX_EVENT_MS = 253_402_300_799_999L;
    private static final Pattern ISO = Pattern.compile(
        "([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\\.([0-9]{1,9}))?(Z|[+-][0-9]{2}:[0-9]{2})");
    private static final Pattern SCHEMA_TS = Pattern.compile("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z");
    private static final Pattern DECIMAL = Pattern.compile("-?[0-9]+(\\.[0-9]+)?");
    // what Python's Decimal() reads as a finite number (admission.to_decimal): sign, digits with an optional point,
    // an optional exponent, surrounding whitespace
    private static final Pattern DECIMAL_VALUE = Pattern.compile(
        "\\s*[+-]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][+-]?[0-9]+)?\\s*");

    /** One declared property and its keywords. */
    private static final class Prop {
        String name;
        List<String> types;
        Integer minLength;
        Integer maxLength;
        Pattern pattern;
        List<Object> enumValues;
        BigDecimal minimum;
        BigDecimal maximum;
        String format;
    }

    private final List<String> required = new ArrayList<>();
    private final List<Prop> props = new ArrayList<>();
    private final String eventTime;
    private final List<String> ids = new ArrayList<>();
    private final List<String> idWhat = new ArrayList<>();
    private final List<String> outNames = new ArrayList<>();
    private final List<String> outTypes = new ArrayList<>();

    /** A classifier from the compiler's spec (JSON: required, properties, event_time, ids, out). */
    @SuppressWarnings("unchecked")
    public Admission(String specJson) {
        Map<String, Object> spec;
        try {
            spec = (Map<String, Object>) Json.parse(specJson);
        } catch (Json.Malformed e) {
            throw new IllegalArgumentException("bad admission spec: " + e.getMessage(), e);
        }
        for (Object r : (List<Object>) spec.get("required")) {
            required.add((String) r);
        }
        for (Map.Entry<String, Object> e : ((Map<String, Object>) spec.get("properties")).entrySet()) {
            Map<String, Object> kw = (Map<String, Object>) e.getValue();
            Prop p = new Prop();
            p.name = e.getKey();
            Object t = kw.get("type");
            if (t instanceof String) {
                p.types = List.of((String) t);
            } else if (t instanceof List) {
                p.types = new ArrayList<>();
                for (Object x : (List<Object>) t) {
                    p.types.add((String) x);
                }
            }
            p.minLength = kw.containsKey("minLength") ? ((Long) kw.get("minLength")).intValue() : null;
            p.maxLength = kw.containsKey("maxLength") ? ((Long) kw.get("maxLength")).intValue() : null;
            // Python's re: '$' also matches before a final '\n' (and only '\n' ends a line)
            p.pattern = kw.containsKey("pattern") ? Pattern.compile((String) kw.get("pattern"), Pattern.UNIX_LINES) : null;
            p.enumValues = (List<Object>) kw.get("enum");
            p.minimum = limit(kw.get("minimum"));
            p.maximum = limit(kw.get("maximum"));
            p.format = (String) kw.get("format");
            props.add(p);
        }
        eventTime = (String) spec.get("event_time");
        for (Object pair : (List<Object>) spec.get("ids")) {
            ids.add((String) ((List<Object>) pair).get(0));
            idWhat.add((String) ((List<Object>) pair).get(1));
        }
        for (Object pair : (List<Object>) spec.get("out")) {
            outNames.add((String) ((List<Object>) pair).get(0));
            outTypes.add((String) ((List<Object>) pair).get(1));
        }
    }

    private static BigDecimal limit(Object v) {
        if (v == null) {
            return null;
        }
        return v instanceof Long ? BigDecimal.valueOf((Long) v) : new BigDecimal((Double) v);
    }

    /** {@code [detail or null, ts ms, typed event id, typed fields...]} of one record value. */
    public String[] classify(byte[] raw) {
        String[] out = new String[3 + outNames.size()];
        try {
            Map<String, Object> payload = payload(raw);
            String problem = validate(payload);
            if (problem != null) {
                throw new Json.Malformed("schema: " + problem);
            }
            long ts = eventTimeMs(payload.get(eventTime));
            Object id = null;
            for (int k = 0; k < ids.size(); k++) {
                Object v = keyValue(payload, ids.get(k), idWhat.get(k));
                id = k == 0 ? v : id;
            }
            out[1] = Long.toString(ts);
            out[2] = (id instanceof String ? "s" : "i") + id;
            for (int k = 0; k < outNames.size(); k++) {
                out[3 + k] = typed(payload.get(outNames.get(k)), outTypes.get(k));
            }
        } catch (Json.Malformed e) {
            out[0] = e.getMessage();
        }
        return out;
    }

    private static boolean ascii(byte[] raw) {
        for (byte b : raw) {
            if (b < 0) {
                return false;
            }
        }
        return true;
    }

    /** The text of strict UTF-8 bytes (as Python's {@code bytes.decode("utf-8")}), or null if they are not. */
    public static String strictUtf8(byte[] raw) {
        if (ascii(raw)) {  // the common case: ASCII is valid UTF-8 and decodes byte for byte (a copy, no decoder)
            return new String(raw, StandardCharsets.ISO_8859_1);
        }
        CharsetDecoder dec = StandardCharsets.UTF_8.newDecoder()
            .onMalformedInput(CodingErrorAction.REPORT).onUnmappableCharacter(CodingErrorAction.REPORT);
        try {
            CharBuffer chars = dec.decode(ByteBuffer.wrap(raw));
            return chars.toString();
        } catch (CharacterCodingException e) {
            return null;
        }
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> payload(byte[] raw) throws Json.Malformed {
        if (raw == null) {
            throw new Json.Malformed("value is missing (null record value)");
        }
        String text = strictUtf8(raw);
        if (text == null) {
            throw new Json.Malformed("value is not UTF-8");
        }
        if (text.startsWith("\uFEFF")) {
            throw new Json.Malformed("not JSON: unexpected UTF-8 BOM");
        }
        Object v = Json.parse(text);
        if (!(v instanceof Map)) {
            throw new Json.Malformed("value must be a JSON object");
        }
        return (Map<String, Object>) v;
    }

    private String validate(Map<String, Object> payload) {
        for (String name : required) {
            if (!payload.containsKey(name)) {
                return "'" + name + "' is a required property";
            }
        }
        for (Prop p : props) {
            Object v = payload.get(p.name);
            if (v == null) {
                continue;
            }
            String problem = check(p, v);
            if (problem != null) {
                return p.name + ": " + problem;
            }
        }
        return null;
    }

    private static boolean isNumber(Object v) {
        return v instanceof Long || v instanceof Double;
    }

    private static boolean hasType(Object v, String type) {
        switch (type) {
            case "string": return v instanceof String;
            case "integer": return v instanceof Long || (v instanceof Double && isIntegral((Double) v));
            case "number": return isNumber(v);
            case "boolean": return v instanceof Boolean;
            case "null": return v == Json.NULL;
            case "object": return v instanceof Map;
            case "array": return v instanceof List;
            default: throw new IllegalArgumentException("JSON type " + type);
        }
    }

    private static boolean isIntegral(double d) {  // Python float.is_integer()
        return !Double.isInfinite(d) && !Double.isNaN(d) && d == Math.floor(d);
    }

    /** Python: a number compared with a limit, exactly (int vs float too). */
    private static int compare(Object v, BigDecimal limit) {
        if (v instanceof Long) {
            return BigDecimal.valueOf((Long) v).compareTo(limit);
        }
        double d = (Double) v;
        if (Double.isInfinite(d)) {
            return d > 0 ? 1 : -1;
        }
        return new BigDecimal(d).compareTo(limit);
    }

    private static String check(Prop p, Object v) {
        if (p.types != null) {
            boolean ok = false;
            for (String t : p.types) {
                ok |= hasType(v, t);
            }
            if (!ok) {
                return v + " is not of type " + p.types;
            }
        }
        if (v instanceof String) {
            String s = (String) v;
            int len = s.codePointCount(0, s.length());
            if (p.minLength != null && len < p.minLength) {
                return "shorter than " + p.minLength;
            }
            if (p.maxLength != null && len > p.maxLength) {
                return "longer than " + p.maxLength;
            }
            if (p.pattern != null && !p.pattern.matcher(s).find()) {
                return "does not match " + p.pattern.pattern();
            }
            if ("date-time".equals(p.format) && !schemaTimestamp(s)) {
                return "is not a 'date-time'";
            }
            if ("decimal".equals(p.format) && !DECIMAL.matcher(s).matches()) {
                return "is not a 'decimal'";
            }
        }
        if (p.enumValues != null && !p.enumValues.contains(v)) {
            return "is not one of " + p.enumValues;
        }
        if (isNumber(v)) {
            if (p.minimum != null && compare(v, p.minimum) < 0) {
                return "is less than the minimum of " + p.minimum;
            }
            if (p.maximum != null && compare(v, p.maximum) > 0) {
                return "is greater than the maximum of " + p.maximum;
            }
        }
        return null;
    }

    /** schemas._check_timestamp: exactly YYYY-MM-DDTHH:MM:SS.fffZ and a real date-time (year >= 1). */
    private static boolean schemaTimestamp(String s) {
        if (!SCHEMA_TS.matcher(s).matches()) {
            return false;
        }
        return validDateTime(num(s, 0, 4), num(s, 5, 7), num(s, 8, 10), num(s, 11, 13), num(s, 14, 16), num(s, 17, 19));
    }

    private static int num(String s, int from, int to) {
        return Integer.parseInt(s.substring(from, to));
    }

    private static boolean validDateTime(int y, int mo, int d, int h, int mi, int sec) {
        return y >= 1 && mo >= 1 && mo <= 12 && d >= 1 && d <= YearMonth.of(y, mo).lengthOfMonth()
            && h <= 23 && mi <= 59 && sec <= 59;
    }

    /** admission.parse_event_time. */
    private static long eventTimeMs(Object v) throws Json.Malformed {
        long ms;
        if (v instanceof Long) {
            ms = (Long) v;
        } else if (v instanceof String) {
            Matcher m = ISO.matcher((String) v);
            if (!m.matches()) {
                throw new Json.Malformed("event time " + v + " is not ISO-8601 with a zone");
            }
            String zone = m.group(8);
            long offsetMs = 0;
            if (!zone.equals("Z")) {
                int zh = Integer.parseInt(zone.substring(1, 3));
                int zm = Integer.parseInt(zone.substring(4, 6));
                if (zh > 23 || zm > 59) {
                    throw new Json.Malformed("event time " + v + " has an invalid zone offset");
                }
                offsetMs = (zh * 3_600_000L + zm * 60_000L) * (zone.charAt(0) == '+' ? 1 : -1);
            }
            int y = Integer.parseInt(m.group(1));
            int mo = Integer.parseInt(m.group(2));
            int d = Integer.parseInt(m.group(3));
            int h = Integer.parseInt(m.group(4));
            int mi = Integer.parseInt(m.group(5));
            int sec = Integer.parseInt(m.group(6));
            if (!validDateTime(y, mo, d, h, mi, sec)) {
                throw new Json.Malformed("event time " + v + " is not a valid date-time");
            }
            String fraction = m.group(7) == null ? "0" : m.group(7);
            String milli = (fraction.length() > 3 ? fraction.substring(0, 3) : fraction + "000".substring(fraction.length()));
            ms = LocalDateTime.of(y, mo, d, h, mi, sec).toEpochSecond(ZoneOffset.UTC) * 1000L - offsetMs + Integer.parseInt(milli);
        } else {
            throw new Json.Malformed("event time must be epoch ms (integer) or an ISO-8601 string, got " + v);
        }
        if (ms < 0 || ms > MAX_EVENT_MS) {
            throw new Json.Malformed("event time " + v + " is outside 1970-01-01..9999-12-31");
        }
        return ms;
    }

    /** admission._key_value: a non-empty string or an integer. */
    private static Object keyValue(Map<String, Object> payload, String field, String what) throws Json.Malformed {
        Object v = payload.get(field);
        if (v == null || v == Json.NULL) {
            throw new Json.Malformed(what + " field '" + field + "' is missing or null");
        }
        if (!(v instanceof String) && !(v instanceof Long)) {
            throw new Json.Malformed(what + " field '" + field + "' must be a string or an integer, got " + v);
        }
        if ("".equals(v)) {
            throw new Json.Malformed(what + " field '" + field + "' is empty");
        }
        return v;
    }

    /** The text the job casts to the field's column type (null when the value is not of that kind). */
    private static String typed(Object v, String type) {
        switch (type) {
            case "string": return v instanceof String ? (String) v : null;
            case "int64": return v instanceof Long ? v.toString() : null;
            case "float64": return isNumber(v) ? Double.toString(((Number) v).doubleValue()) : null;
            case "bool": return v instanceof Boolean ? v.toString() : null;
            case "decimal": return decimalText(v);
            default: throw new IllegalArgumentException("value type " + type);
        }
    }

    /** admission.to_decimal's reading: a string of a finite decimal, or an integer (else null: not a decimal). */
    private static String decimalText(Object v) {
        if (v instanceof Long) {
            return v.toString();
        }
        if (v instanceof String && DECIMAL_VALUE.matcher((String) v).matches()) {
            return new BigDecimal(((String) v).trim()).toPlainString();
        }
        return null;
    }

    /** Test entry: {@code java dev.skewless.flink.Admission SPEC_JSON < base64 lines}; prints JSON lines. */
    public static void main(String[] args) throws Exception {
        Admission a = new Admission(args[0]);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        StringBuilder out = new StringBuilder();
        for (String line; (line = in.readLine()) != null; ) {
            String[] r = a.classify(line.equals("-") ? null : Base64.getDecoder().decode(line));
            out.append('[');
            for (int k = 0; k < r.length; k++) {
                out.append(k == 0 ? "" : ",").append(r[k] == null ? "null" : quote(r[k]));
            }
            out.append("]\n");
        }
        System.out.print(out);
        System.out.flush();
    }

    private static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20 || (c >= 0xD800 && c <= 0xDFFF)) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
