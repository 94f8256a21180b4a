package dev.skewless.flink;

import java.util.Map;
import java.util.Properties;
import org.apache.flink.api.common.functions.FilterFunction;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.types.Row;
import org.apache.flink.types.RowKind;

/**
 * Attaches the job's sinks to its changelog stream (called from Python, streaming_jobs.job): tile and
 * progress rows to {@link RedisTileSink}, dead-letter rows to a Kafka sink (at least once, flushed at every
 * checkpoint). No Python operator is left in the job: every record stays in the JVM. The Kafka client's security
 * settings (SASL, TLS) come from the spec's {@code kafka_properties} (skewless.config.kafka_client_properties).
 */
public final class SinkGraph {
    private SinkGraph() {
    }

    /** Dead-letter rows ({@code kind = 'D'}, inserts only). */
    public static final class DeadLetters implements FilterFunction<Row> {
        private static final long serialVersionUID = 1L;

        @Override
        public boolean filter(Row row) {
            RowKind k = row.getKind();
            return "D".equals(row.getField(0)) && (k == RowKind.INSERT || k == RowKind.UPDATE_AFTER);
        }
    }

    public static void attach(DataStream<Row> changelog, String spec, String bootstrap, String deadLetterTopic,
                              String source) {
        changelog.sinkTo(new RedisTileSink(spec)).name("redis-sink-" + source).uid("redis-sink-" + source);
        Properties producer = new Properties();
        producer.setProperty("acks", "all");
        producer.setProperty("linger.ms", "5");
        try {
            @SuppressWarnings("unchecked")
            Map<String, Object> security = (Map<String, Object>) ((Map<String, Object>) Json.parse(spec)).get("kafka_properties");
            if (security != null) {
                security.forEach((k, v) -> producer.setProperty(k, (String) v));
            }
        } catch (Json.Malformed e) {
            throw new IllegalArgumentException("bad sink spec: " + e.getMessage(), e);
        }
        KafkaSink<Row> dead = KafkaSink.<Row>builder()
            .setBootstrapServers(bootstrap)
            .setRecordSerializer(new DeadLetterSerializer(spec, deadLetterTopic))
            .setDeliveryGuarantee(DeliveryGuarantee.AT_LEAST_ONCE)
            .setKafkaProducerConfig(producer)
            .build();
        changelog.filter(new DeadLetters()).name("dead-letter-rows-" + source)
            .sinkTo(dead).name("dead-letter-sink-" + source).uid("dead-letter-sink-" + source);
    }
}
