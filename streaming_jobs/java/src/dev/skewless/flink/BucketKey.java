package dev.skewless.flink;

import java.nio.charset.StandardCharsets;
import java.util.zip.CRC32;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.types.Row;

/**
 * The sink's key, computed in the JVM: {@code Row(bucket, row)} with bucket = CRC32 of
 * {@code "<kind>|<k0>"} (fields 0 and 3 of a changelog row) mod {@code buckets}, the same as
 * {@code streaming_jobs.sink.bucket_of}. This is the shape PyFlink's own {@code key_by} gives a keyed Python
 * operator, without a Python key selector (one Python pass per changelog row instead of two).
 */
public class BucketKey implements MapFunction<Row, Row> {
    private static final long serialVersionUID = 1L;
    private final int buckets;

    public BucketKey(int buckets) {
        if (buckets <= 0) {
            throw new IllegalArgumentException("buckets must be positive, got " + buckets);
        }
        this.buckets = buckets;
    }

    /** The bucket of one changelog row. */
    public static int bucket(Object kind, Object k0, int buckets) {
        CRC32 crc = new CRC32();
        crc.update((kind + "|" + k0).getBytes(StandardCharsets.UTF_8));
        return (int) (crc.getValue() % buckets);
    }

    @Override
    public Row map(Row row) {
        return Row.of(bucket(row.getField(0), row.getField(3), buckets), row);
    }
}
