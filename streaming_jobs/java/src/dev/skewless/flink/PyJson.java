package dev.skewless.flink;

import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;

/**
 * JSON text exactly as Python's {@code json.dumps(..., separators=(",", ":"), ensure_ascii=False)} writes it
 * (what {@code skewless.core.laws.dumps} produces): the sink's Redis values must be byte-identical to the
 * ones {@code skewless.core.layout} encodes, so readers and tests see one format whichever writer wrote it.
 */
public final class PyJson {
    private PyJson() {
    }

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    /** A JSON string: {@code "} and {@code \} escaped, control characters as Python escapes them. */
    public static StringBuilder string(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"':
                    out.append("\\\"");
                    break;
                case '\\':
                    out.append("\\\\");
                    break;
                case '\n':
                    out.append("\\n");
                    break;
                case '\r':
                    out.append("\\r");
                    break;
                case '\t':
                    out.append("\\t");
                    break;
                case '\b':
                    out.append("\\b");
                    break;
                case '\f':
                    out.append("\\f");
                    break;
                default:
                    if (c < 0x20) {
                        out.append("\\u00").append(HEX[c >> 4]).append(HEX[c & 15]);
                    } else {
                        out.append(c);
                    }
            }
        }
        return out.append('"');
    }

    /** Python's {@code repr(float)}: the shortest digits that read back as the same double. */
    public static String floatRepr(double x) {
        if (Double.isNaN(x) || Double.isInfinite(x)) {
            throw new IllegalArgumentException(x + " cannot be encoded (not finite)");
        }
        if (x == 0.0) {
            return (Double.doubleToRawLongBits(x) < 0) ? "-0.0" : "0.0";
        }
        BigDecimal exact = new BigDecimal(x);
        BigDecimal shortest = null;
        for (int p = 1; p <= 17 && shortest == null; p++) {
            // the p-digit decimals next to x: the nearest one, and its neighbours (at a power of two the
            // interval that reads back as x is narrower below x, so the nearest may miss where another hits)
            BigDecimal r = exact.round(new MathContext(p, RoundingMode.HALF_EVEN));
            BigDecimal unit = BigDecimal.ONE.scaleByPowerOfTen(-r.scale());
            for (BigDecimal c : new BigDecimal[] {r, r.subtract(unit), r.add(unit)}) {
                if (c.signum() != 0 && c.doubleValue() == x
                    && (shortest == null || c.subtract(exact).abs().compareTo(shortest.subtract(exact).abs()) < 0)) {
                    shortest = c;
                }
            }
        }
        if (shortest == null) {
            throw new IllegalStateException("no round-trip digits for " + x);
        }
        String digits = shortest.unscaledValue().abs().toString();
        int strip = digits.length();
        while (strip > 1 && digits.charAt(strip - 1) == '0') {
            strip--;
        }
        // x = 0.<digits> * 10^decpt
        int decpt = digits.length() - shortest.scale();
        digits = digits.substring(0, strip);
        StringBuilder out = new StringBuilder(24);
        if (x < 0) {
            out.append('-');
        }
        if (decpt > -4 && decpt <= 16) {
            if (decpt <= 0) {
                out.append("0.");
                for (int i = 0; i < -decpt; i++) {
                    out.append('0');
                }
                out.append(digits);
            } else if (decpt >= digits.length()) {
                out.append(digits);
                for (int i = digits.length(); i < decpt; i++) {
                    out.append('0');
                }
                out.append(".0");
            } else {
                out.append(digits, 0, decpt).append('.').append(digits, decpt, digits.length());
            }
        } else {
            out.append(digits.charAt(0));
            if (digits.length() > 1) {
                out.append('.').append(digits, 1, digits.length());
            }
            int e = decpt - 1;
            out.append(e < 0 ? "e-" : "e+");
            int abs = Math.abs(e);
            if (abs < 10) {
                out.append('0');
            }
            out.append(abs);
        }
        return out.toString();
    }
}
