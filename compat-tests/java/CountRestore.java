// Kafka Streams count per key in a persistent (RocksDB) store, for
// compat-tests/test_streams_restore.py.
//
//   CountRestore <bootstrap> <application.id> <input topic> <output topic> <state dir>
//
// input (String key, any String value) -> groupByKey -> count in the RocksDB store "counts" (its
// changelog topic <application.id>-counts-changelog, which Streams creates with
// cleanup.policy=compact; the store's extra changelog configs below make the cleaner actually
// compact it within seconds) -> output topic (key -> count as a Long). processing.guarantee
// at_least_once, commits every 200 ms, record cache off (every count update goes out).
// Runs until SIGTERM (closes Streams cleanly: commits and checkpoints).
// Prints "state <NEW STATE>" on each Streams state change, and for every changelog partition it
// restores "restore-start <topic-partition> <start offset> <end offset>" and
// "restore-end <topic-partition> <records restored>"; any uncaught exception shuts the client down
// and exits 1.
import java.time.Duration;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.StateRestoreListener;
import org.apache.kafka.streams.state.Stores;

public class CountRestore {
    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            System.err.println("usage: CountRestore <bootstrap> <application.id> <input> <output> <state dir>");
            System.exit(2);
        }
        String bootstrap = args[0], appId = args[1], input = args[2], output = args[3], stateDir = args[4];

        Properties p = new Properties();
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, "200");
        p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, "1");
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, "1");
        p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, "0");
        p.put(StreamsConfig.consumerPrefix("session.timeout.ms"), "10000");
        p.put(StreamsConfig.consumerPrefix("heartbeat.interval.ms"), "1000");

        // Topic overrides for the changelog, beside the cleanup.policy=compact Streams sets: small
        // segments rolled after 100 ms and a low dirty ratio, so the log cleaner (every
        // log.cleaner.backoff.ms) compacts it between the scenario's two runs.
        Map<String, String> changelog = Map.of(
            "segment.bytes", "1048576", "segment.ms", "100", "min.cleanable.dirty.ratio", "0.01");

        StreamsBuilder b = new StreamsBuilder();
        b.stream(input, Consumed.with(Serdes.String(), Serdes.String()))
         .groupByKey(Grouped.with(Serdes.String(), Serdes.String()))
         .count(Materialized.<String, Long>as(Stores.persistentKeyValueStore("counts"))
                .withKeySerde(Serdes.String()).withValueSerde(Serdes.Long())
                .withLoggingEnabled(changelog))
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
        streams.setGlobalStateRestoreListener(new StateRestoreListener() {
            @Override
            public void onRestoreStart(TopicPartition tp, String store, long start, long end) {
                System.out.println("restore-start " + tp + " " + start + " " + end);
                System.out.flush();
            }

            @Override
            public void onBatchRestored(TopicPartition tp, String store, long batchEnd, long n) {}

            @Override
            public void onRestoreEnd(TopicPartition tp, String store, long total) {
                System.out.println("restore-end " + tp + " " + total);
                System.out.flush();
            }
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
