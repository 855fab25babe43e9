// Kafka transactions (KIP-98) with the Java client, for compat-tests/test_transactions.py. Each mode
// prints tab-separated lines that the scenario checks; any unexpected exception exits non-zero.
//
//   interleave <bootstrap> <topic> <tidA> <tidB>
//       Two transactional producers on partitions 0 and 1 of <topic>, commits and aborts
//       interleaved (see main below). Waits until no transaction is open (read_committed end offset
//       == high watermark), then prints "end <p> <lso> <hw>", and each record a read_committed and a
//       read_uncommitted consumer see: "rc|ru <p> <offset> <value>".
//   ctp <bootstrap> <in> <out> <group> <tid>
//       Consume-transform-produce from <in> (one partition, already filled) to <out> partition 0
//       with sendOffsetsToTransaction(offsets, consumer.groupMetadata()): a committed round, an
//       aborted round, a rewind to the committed offset, then rounds until <in> is drained. Prints
//       "committed <round> <offset>" (consumer.committed() after each round) and "copied <round> <n>".
//   fence <bootstrap> <topic> <tid>
//       Producer A opens a transaction on partition 0, producer B with the same transactional.id
//       initializes (fencing A); prints "send|commit|abort <exception class> <message>" for A's next
//       send, its commitTransaction and then abortTransaction; then B commits one record "b".
import java.time.Duration;
import java.util.*;
import java.util.concurrent.*;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class Transactions {
    static String bootstrap;

    static KafkaProducer<String, String> producer(String tid) {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, tid);
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "30000");
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "20000");
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "30000");
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        KafkaProducer<String, String> producer = new KafkaProducer<>(p);
        producer.initTransactions();
        return producer;
    }

    static KafkaConsumer<String, String> consumer(String group, String isolation) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        if (group != null) p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, isolation);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "4");
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        return new KafkaConsumer<>(p);
    }

    static void send(KafkaProducer<String, String> p, String topic, int partition, String value)
            throws Exception {
        p.send(new ProducerRecord<>(topic, partition, null, value)).get(30, TimeUnit.SECONDS);
    }

    public static void main(String[] a) throws Exception {
        bootstrap = a[1];
        switch (a[0]) {
            case "interleave" -> interleave(a[2], a[3], a[4]);
            case "ctp" -> ctp(a[2], a[3], a[4], a[5]);
            case "fence" -> fence(a[2], a[3]);
            default -> throw new IllegalArgumentException(a[0]);
        }
    }

    static void interleave(String topic, String tidA, String tidB) throws Exception {
        try (KafkaProducer<String, String> pa = producer(tidA);
             KafkaProducer<String, String> pb = producer(tidB)) {
            pa.beginTransaction();
            send(pa, topic, 0, "a1");
            send(pa, topic, 1, "a2");
            pb.beginTransaction();
            send(pb, topic, 0, "b1");
            send(pb, topic, 1, "b2");
            send(pa, topic, 0, "a3");
            pb.commitTransaction();
            pa.abortTransaction();
            pa.beginTransaction();
            send(pa, topic, 0, "a4");
            send(pa, topic, 1, "a5");
            pb.beginTransaction();
            send(pb, topic, 0, "b3");
            pa.commitTransaction();
            pb.abortTransaction();
            pb.beginTransaction();
            send(pb, topic, 1, "b4");
            pb.commitTransaction();
        }
        List<TopicPartition> tps = List.of(new TopicPartition(topic, 0), new TopicPartition(topic, 1));
        // The commit/abort markers are written after EndTxn returns: wait until none is pending.
        Map<TopicPartition, long[]> ends = new HashMap<>();
        try (Admin admin = Admin.create(Map.<String, Object>of("bootstrap.servers", bootstrap))) {
            long deadline = System.currentTimeMillis() + 30000;
            while (true) {
                boolean settled = true;
                for (TopicPartition tp : tps) {
                    long lso = latest(admin, tp, IsolationLevel.READ_COMMITTED);
                    long hw = latest(admin, tp, IsolationLevel.READ_UNCOMMITTED);
                    ends.put(tp, new long[] {lso, hw});
                    settled &= lso == hw;
                }
                if (settled || System.currentTimeMillis() > deadline) break;
                Thread.sleep(200);
            }
        }
        for (TopicPartition tp : tps) {
            System.out.println("end\t" + tp.partition() + "\t" + ends.get(tp)[0] + "\t" + ends.get(tp)[1]);
        }
        for (String iso : List.of("read_committed", "read_uncommitted")) {
            try (KafkaConsumer<String, String> c = consumer(null, iso)) {
                c.assign(tps);
                c.seekToBeginning(tps);
                // endOffsets is the last stable offset for read_committed, the high watermark otherwise.
                Map<TopicPartition, Long> end = c.endOffsets(tps);
                List<ConsumerRecord<String, String>> got = new ArrayList<>();
                long deadline = System.currentTimeMillis() + 30000;
                while (tps.stream().anyMatch(tp -> c.position(tp) < end.get(tp))
                        && System.currentTimeMillis() < deadline) {
                    for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(200))) got.add(r);
                }
                got.sort(Comparator.comparingInt(ConsumerRecord<String, String>::partition)
                    .thenComparingLong(ConsumerRecord::offset));
                for (ConsumerRecord<String, String> r : got) {
                    System.out.println((iso.equals("read_committed") ? "rc" : "ru") + "\t" + r.partition()
                        + "\t" + r.offset() + "\t" + r.value());
                }
            }
        }
    }

    static long latest(Admin admin, TopicPartition tp, IsolationLevel iso) throws Exception {
        return admin.listOffsets(Map.of(tp, OffsetSpec.latest()), new ListOffsetsOptions(iso))
            .partitionResult(tp).get().offset();
    }

    static List<ConsumerRecord<String, String>> pollSome(KafkaConsumer<String, String> c) {
        long deadline = System.currentTimeMillis() + 30000;
        while (System.currentTimeMillis() < deadline) {
            ConsumerRecords<String, String> rs = c.poll(Duration.ofMillis(200));
            if (!rs.isEmpty()) {
                List<ConsumerRecord<String, String>> out = new ArrayList<>();
                rs.forEach(out::add);
                return out;
            }
        }
        throw new IllegalStateException("no records within 30 s");
    }

    static void ctp(String in, String out, String group, String tid) throws Exception {
        TopicPartition tp = new TopicPartition(in, 0);
        try (KafkaConsumer<String, String> c = consumer(group, "read_committed");
             KafkaProducer<String, String> p = producer(tid)) {
            c.subscribe(List.of(in));
            long end = -1;
            for (int round = 1; ; round++) {
                if (round > 2 && c.position(tp) >= end) break;
                List<ConsumerRecord<String, String>> rs = pollSome(c);
                p.beginTransaction();
                for (ConsumerRecord<String, String> r : rs) send(p, out, 0, r.value());
                long next = rs.get(rs.size() - 1).offset() + 1;
                p.sendOffsetsToTransaction(Map.of(tp, new OffsetAndMetadata(next)), c.groupMetadata());
                boolean abort = round == 2;
                if (abort) p.abortTransaction(); else p.commitTransaction();
                System.out.println("copied\t" + round + "\t" + rs.size() + "\t"
                    + (abort ? "aborted" : "committed"));
                // committed() asks for stable offsets (read_committed): it waits out the markers.
                OffsetAndMetadata done = c.committed(Set.of(tp), Duration.ofSeconds(30)).get(tp);
                System.out.println("committed\t" + round + "\t" + (done == null ? -1 : done.offset()));
                // Rewind: redo the aborted work.
                if (abort) c.seek(tp, done == null ? 0 : done.offset());
                if (end < 0) end = c.endOffsets(Set.of(tp)).get(tp);
            }
        }
    }

    static String outcome(Exception e) {
        Throwable t = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
        return t.getClass().getName() + "\t" + t.getMessage();
    }

    static void fence(String topic, String tid) throws Exception {
        KafkaProducer<String, String> pa = producer(tid);
        pa.beginTransaction();
        send(pa, topic, 0, "a1");
        try (KafkaProducer<String, String> pb = producer(tid)) {  // fences pa
            try {
                send(pa, topic, 0, "a2");
                System.out.println("send\tOK");
            } catch (Exception e) {
                System.out.println("send\t" + outcome(e));
            }
            try {
                pa.commitTransaction();
                System.out.println("commit\tOK");
            } catch (Exception e) {
                System.out.println("commit\t" + outcome(e));
            }
            try {
                pa.abortTransaction();
                System.out.println("abort\tOK");
            } catch (Exception e) {
                System.out.println("abort\t" + outcome(e));
            }
            pa.close(Duration.ZERO);
            pb.beginTransaction();
            send(pb, topic, 0, "b");
            pb.commitTransaction();
        }
    }
}
