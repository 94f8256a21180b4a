package dev.skewless.flink;

import java.nio.charset.StandardCharsets;
import java.util.Map;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.flink.types.Row;

/**
 * Dead-letter rows of the changelog as Kafka records of {@code <topic>.dead-letters}: key
 * {@code partition:offset}, value the JSON record {@link TileEncoder#deadLetterValue} builds.
 */
public final class DeadLetterSerializer implements KafkaRecordSerializationSchema<Row> {
    private static final long serialVersionUID = 1L;
    private final String spec;
    private final String topic;
    private transient TileEncoder enc;

    public DeadLetterSerializer(String spec, String topic) {
        this.spec = spec;
        this.topic = topic;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(Row row, KafkaSinkContext context, Long timestamp) {
        if (enc == null) {
            try {
                @SuppressWarnings("unchecked")
                Map<String, Object> m = (Map<String, Object>) Json.parse(spec);
                enc = new TileEncoder(m);
            } catch (Json.Malformed e) {
                throw new IllegalStateException("bad sink spec: " + e.getMessage(), e);
            }
        }
        Object[] f = new Object[row.getArity()];
        for (int i = 0; i < f.length; i++) {
            f[i] = row.getField(i);
        }
        return new ProducerRecord<>(topic, enc.deadLetterKey(f).getBytes(StandardCharsets.UTF_8),
            enc.deadLetterValue(f).getBytes(StandardCharsets.UTF_8));
    }
}
