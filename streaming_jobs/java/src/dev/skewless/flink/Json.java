package dev.skewless.flink;

import java.math.BigInteger;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A strict JSON parser with the semantics of Python's {@code json.loads} as {@code admission.parse_payload}
 * uses it: whitespace is space/tab/CR/LF only, no BOM, no NaN/Infinity, no control characters in strings,
 * {@code \\uXXXX} escapes (lone surrogates kept), duplicate keys and integers outside int64 rejected anywhere.
 *
 * <p>Values: {@link Map} (insertion order), {@link List}, {@link String}, {@link Long} (an integer token),
 * {@link Double} (a token with a fraction or exponent), {@link Boolean}, {@link #NULL}.
 */
public final class Json {
    /** JSON null (a Map value of Java null would read as "absent"). */
    public static final Object NULL = new Object() {
        @Override
        public String toString() {
            return "null";
        }
    };

    private static final BigInteger MIN = BigInteger.valueOf(Long.MIN_VALUE);
    private static final BigInteger MAX = BigInteger.valueOf(Long.MAX_VALUE);

    /** A payload the contract classifies as malformed; the message says why. */
    public static final class Malformed extends Exception {
        public Malformed(String message) {
            super(message, null, false, false);
        }
    }

    private final String s;
    private int i;

    private Json(String s) {
        this.s = s;
    }

    /** The value of a whole JSON text, or {@link Malformed}. */
    public static Object parse(String text) throws Malformed {
        Json p = new Json(text);
        p.ws();
        Object v = p.value();
        p.ws();
        if (p.i != text.length()) {
            throw p.error("extra data");
        }
        return v;
    }

    private Malformed error(String what) {
        return new Malformed("not JSON: " + what + " at char " + i);
    }

    private void ws() {
        while (i < s.length()) {
            char c = s.charAt(i);
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                return;
            }
            i++;
        }
    }

    private Object value() throws Malformed {
        if (i >= s.length()) {
            throw error("expecting value");
        }
        char c = s.charAt(i);
        switch (c) {
            case '"':
                return string();
            case '{':
                return object();
            case '[':
                return array();
            case 'n':
                return literal("null", NULL);
            case 't':
                return literal("true", Boolean.TRUE);
            case 'f':
                return literal("false", Boolean.FALSE);
            default:
                if (c == '-' || (c >= '0' && c <= '9')) {
                    return number();
                }
                throw error("expecting value");
        }
    }

    private Object literal(String word, Object v) throws Malformed {
        if (!s.startsWith(word, i)) {
            throw error("expecting value");
        }
        i += word.length();
        return v;
    }

    private static boolean digit(char c) {
        return c >= '0' && c <= '9';
    }

    private Object number() throws Malformed {
        int start = i;
        if (s.charAt(i) == '-') {
            i++;
        }
        if (i >= s.length() || !digit(s.charAt(i))) {
            throw error("expecting value");
        }
        if (s.charAt(i) == '0') {
            i++;
        } else {
            while (i < s.length() && digit(s.charAt(i))) {
                i++;
            }
        }
        boolean integral = true;
        if (i + 1 < s.length() && s.charAt(i) == '.' && digit(s.charAt(i + 1))) {
            integral = false;
            i += 2;
            while (i < s.length() && digit(s.charAt(i))) {
                i++;
            }
        }
        if (i < s.length() && (s.charAt(i) == 'e' || s.charAt(i) == 'E')) {
            int j = i + 1;
            if (j < s.length() && (s.charAt(j) == '+' || s.charAt(j) == '-')) {
                j++;
            }
            if (j < s.length() && digit(s.charAt(j))) {
                integral = false;
                i = j;
                while (i < s.length() && digit(s.charAt(i))) {
                    i++;
                }
            }
        }
        String text = s.substring(start, i);
        if (!integral) {
            return Double.parseDouble(text);
        }
        if (text.length() < 19) {
            return Long.parseLong(text);
        }
        BigInteger big = new BigInteger(text);
        if (big.compareTo(MIN) < 0 || big.compareTo(MAX) > 0) {
            throw new Malformed("integer " + text + " is outside int64");
        }
        return big.longValue();
    }

    private String string() throws Malformed {
        i++; // opening quote
        StringBuilder out = null;
        int chunk = i;
        while (true) {
            if (i >= s.length()) {
                throw error("unterminated string");
            }
            char c = s.charAt(i);
            if (c == '"') {
                String tail = s.substring(chunk, i++);
                return out == null ? tail : out.append(tail).toString();
            }
            if (c < 0x20) {
                throw error("invalid control character");
            }
            if (c != '\\') {
                i++;
                continue;
            }
            if (out == null) {
                out = new StringBuilder();
            }
            out.append(s, chunk, i);
            i++;
            if (i >= s.length()) {
                throw error("unterminated string");
            }
            char e = s.charAt(i++);
            switch (e) {
                case '"': out.append('"'); break;
                case '\\': out.append('\\'); break;
                case '/': out.append('/'); break;
                case 'b': out.append('\b'); break;
                case 'f': out.append('\f'); break;
                case 'n': out.append('\n'); break;
                case 'r': out.append('\r'); break;
                case 't': out.append('\t'); break;
                case 'u': out.append((char) hex4()); break;
                default: throw error("invalid \\escape");
            }
            chunk = i;
        }
    }

    private int hex4() throws Malformed {
        if (i + 4 > s.length()) {
            throw error("invalid \\uXXXX escape");
        }
        int v = 0;
        for (int k = 0; k < 4; k++) {
            int d = Character.digit(s.charAt(i + k), 16);
            char c = s.charAt(i + k);
            boolean ascii = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
            if (d < 0 || !ascii) {
                throw error("invalid \\uXXXX escape");
            }
            v = v * 16 + d;
        }
        i += 4;
        return v;
    }

    private Map<String, Object> object() throws Malformed {
        i++;
        Map<String, Object> m = new LinkedHashMap<>();
        ws();
        if (i < s.length() && s.charAt(i) == '}') {
            i++;
            return m;
        }
        while (true) {
            if (i >= s.length() || s.charAt(i) != '"') {
                throw error("expecting property name enclosed in double quotes");
            }
            String key = string();
            ws();
            if (i >= s.length() || s.charAt(i) != ':') {
                throw error("expecting ':' delimiter");
            }
            i++;
            ws();
            Object v = value();
            if (m.put(key, v) != null) {
                throw new Malformed("duplicate JSON key '" + key + "'");
            }
            ws();
            if (i < s.length() && s.charAt(i) == '}') {
                i++;
                return m;
            }
            if (i >= s.length() || s.charAt(i) != ',') {
                throw error("expecting ',' delimiter");
            }
            i++;
            ws();
        }
    }

    private List<Object> array() throws Malformed {
        i++;
        List<Object> a = new ArrayList<>();
        ws();
        if (i < s.length() && s.charAt(i) == ']') {
            i++;
            return a;
        }
        while (true) {
            a.add(value());
            ws();
            if (i < s.length() && s.charAt(i) == ']') {
                i++;
                return a;
            }
            if (i >= s.length() || s.charAt(i) != ',') {
                throw error("expecting ',' delimiter");
            }
            i++;
            ws();
        }
    }
}
