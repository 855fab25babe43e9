// Kafka Streams word count with processing.guarantee=exactly_once_v2, for
// compat-tests/test_streams_eos.py.
//
//   WordCountEos <bootstrap> <application.id> <input topic> <output topic> <state dir>
//
// input (any key, a line of space-separated words as a String value) -> flatMapValues into words
// -> groupBy word (a repartition topic) -> count in an in-memory store (its changelog topic) ->
// output topic (word -> count as a Long). The record cache is off, so every count goes out: in the
// read_committed output each word's values are 1, 2, 3, ... exactly once. Commits (transactions)
// every 200 ms. Runs until killed: SIGTERM closes Streams cleanly, the scenario's kill -9 does not.
// Prints "state <NEW STATE>" on each Streams state change; any uncaught exception shuts the client
// down and exits 1.
import java.time.Duration;
import java.util.Arrays;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.state.BuiltInDslStoreSuppliers;
import org.apache.kafka.streams.state.Stores;

public class WordCountEos {
    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            System.err.println("usage: WordCountEos <bootstrap> <application.id> <input> <output> <state dir>");
            System.exit(2);
        }
        String bootstrap = args[0], appId = args[1], input = args[2], output = args[3], stateDir = args[4];

        Properties p = new Properties();
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, "200");
        p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, "1");
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, "1");
        // No record cache: every count update is forwarded (and so checkable downstream).
        p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, "0");
        // Every DSL store in memory (the count's store is named in-memory below as well), so
        // RocksDB is never opened.
        p.put(StreamsConfig.DSL_STORE_SUPPLIERS_CLASS_CONFIG,
              BuiltInDslStoreSuppliers.InMemoryDslStoreSuppliers.class.getName());
        // A killed instance's consumer leaves the group when its session expires: keep that short
        // so the restarted instance's rebalance does not wait out the 45 s default.
        p.put(StreamsConfig.consumerPrefix("session.timeout.ms"), "10000");
        p.put(StreamsConfig.consumerPrefix("heartbeat.interval.ms"), "1000");

        StreamsBuilder b = new StreamsBuilder();
        b.stream(input, Consumed.with(Serdes.String(), Serdes.String()))
         .flatMapValues(line -> Arrays.asList(line.trim().split("\\s+")))
         .filter((k, w) -> !w.isEmpty())
         .groupBy((k, w) -> w, Grouped.with("words", Serdes.String(), Serdes.String()))
         .count(Materialized.<String, Long>as(Stores.inMemoryKeyValueStore("word-counts"))
                .withKeySerde(Serdes.String()).withValueSerde(Serdes.Long()))
         .toStream()
         .to(output, Produced.with(Serdes.String(), Serdes.Long()));

        KafkaStreams streams = new KafkaStreams(b.build(p), p);
        CountDownLatch done = new CountDownLatch(1);
        final int[] rc = {0};
        streams.setStateListener((now, before) -> {
            System.out.println("state " + now);
            System.out.flush();
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) done.countDown();
        });
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("uncaught exception in Streams: " + e);
            e.printStackTrace();
            rc[0] = 1;
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(20));
            done.countDown();
        }));
        streams.start();
        done.await();
        streams.close(Duration.ofSeconds(20));
        System.exit(rc[0]);
    }
}
