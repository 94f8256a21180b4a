package dev.skewless.flink;

import java.util.concurrent.ConcurrentHashMap;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code skewless_admit(bytes_value, spec)}: {@link Admission#classify} as a Flink SQL scalar function
 * (ARRAY&lt;STRING&gt;: malformed detail or null, event time ms, typed event id, typed fields).
 */
public class AdmitFunction extends ScalarFunction {
    private static final ConcurrentHashMap<String, Admission> SPECS = new ConcurrentHashMap<>();
    private transient String lastSpec;
    private transient Admission last;

    public @DataTypeHint("ARRAY<STRING>") String[] eval(byte[] value, String spec) {
        if (spec != lastSpec) {  // the spec is a literal: usually the same String object every call
            last = SPECS.computeIfAbsent(spec, Admission::new);
            lastSpec = spec;
        }
        return last.classify(value);
    }
}
