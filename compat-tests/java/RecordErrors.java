// Sends records to one partition in a single batch (long linger) with the Java producer and prints
// each record's outcome in send order: "<index>\tOK\t<offset>" or "<index>\t<exception class>\t<message>".
// Used by compat-tests/test_records.py (KIP-467: which records of a batch fail, and how).
// Usage: RecordErrors <bootstrap> <topic> <count> <comma-separated indexes sent without a key>
import java.util.*;
import java.util.concurrent.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.serialization.StringSerializer;

public class RecordErrors {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1];
        int count = Integer.parseInt(args[2]);
        Set<Integer> keyless = new HashSet<>();
        for (String s : args[3].split(",")) if (!s.isEmpty()) keyless.add(Integer.parseInt(s));
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.LINGER_MS_CONFIG, "1000");
        p.put(ProducerConfig.BATCH_SIZE_CONFIG, "1000000");
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "30000");
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "20000");
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        String[] out = new String[count];
        CountDownLatch done = new CountDownLatch(count);
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            for (int i = 0; i < count; i++) {
                final int idx = i;
                String key = keyless.contains(i) ? null : "k" + i;
                producer.send(new ProducerRecord<>(topic, 0, key, "v" + i), (md, e) -> {
                    out[idx] = e == null ? idx + "\tOK\t" + md.offset()
                        : idx + "\t" + e.getClass().getName() + "\t" + e.getMessage();
                    done.countDown();
                });
            }
            producer.flush();
            done.await(60, TimeUnit.SECONDS);
        }
        for (String line : out) System.out.println(line);
    }
}
