// Reads partition 0 of a topic with the Java consumer (assign, no group) from its earliest offset
// until the consumer's position reaches the end offset it was told at the start, and prints:
//   "earliest\t<beginningOffsets>", "end\t<endOffsets>", then one line per record:
//   "<offset>\t<key>\t<value's first 32 bytes, or null for a tombstone>", then "position\t<position>".
// Used by compat-tests/test_compaction.py (a compacted log has offset gaps; the position must still
// get to the end). Usage: CompactedRead <bootstrap> <topic> <timeout ms>
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public class CompactedRead {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1];
        long deadline = System.currentTimeMillis() + Long.parseLong(args[2]);
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        StringBuilder out = new StringBuilder();
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p)) {
            TopicPartition tp = new TopicPartition(topic, 0);
            List<TopicPartition> tps = List.of(tp);
            c.assign(tps);
            long end = c.endOffsets(tps).get(tp);
            out.append("earliest\t").append(c.beginningOffsets(tps).get(tp)).append('\n');
            out.append("end\t").append(end).append('\n');
            c.seekToBeginning(tps);
            while (c.position(tp) < end && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(500))) {
                    byte[] v = r.value();
                    out.append(r.offset()).append('\t')
                        .append(r.key() == null ? "null" : new String(r.key(), StandardCharsets.UTF_8)).append('\t')
                        .append(v == null ? "null" : new String(v, 0, Math.min(32, v.length), StandardCharsets.UTF_8))
                        .append('\n');
                }
            }
            out.append("position\t").append(c.position(tp)).append('\n');
        }
        System.out.print(out);
    }
}
