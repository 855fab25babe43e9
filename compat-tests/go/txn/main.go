// Command txn drives franz-go (kgo) transactions for compat-tests/test_franz_go.py. Subcommands:
//
//	produce  BOOTSTRAP TOPIC TXID N
//	    Three transactions of N records each over partitions 0 and 1 (record i to partition i%2):
//	    "c1" committed (EndTransaction TryCommit), "a2" aborted after its records were written
//	    (TryAbort), "c3" committed. Prints "produced NAME PARTITION OFFSET VALUE" per record and
//	    "ended NAME committed|aborted" per transaction.
//	consume  BOOTSTRAP TOPIC rc|ru PARTITIONS SENTINEL
//	    Reads partitions 0..PARTITIONS-1 from the start (FetchIsolationLevel ReadCommitted or
//	    ReadUncommitted) until a record whose value is SENTINEL was read on every one; prints
//	    "record PARTITION OFFSET VALUE" for each record before the sentinel.
//	etl      BOOTSTRAP GROUP IN OUT TXID MAXPOLL HANGAT
//	    A kgo.GroupTransactSession in GROUP (read_committed) copying IN to the same partition of OUT
//	    as "etl:" + value, one transaction per PollRecords(MAXPOLL) batch. Prints
//	    "produced BATCH COUNT" once a batch's records are written, "committed BATCH COUNT P:NEXT,..."
//	    or "aborted BATCH COUNT" after End. At batch HANGAT (0: never) it prints "hanging" after the
//	    records are written and waits, in the open transaction, to be killed. SIGTERM: stops
//	    between batches, leaves the group (Close) and prints "closed".
//
// The kgo log (debug level) goes to stderr. Exit status 1 with "error ..." on stdout on any
// failure; every wait is bounded.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func fail(format string, args ...any) {
	fmt.Printf("error "+format+"\n", args...)
	os.Exit(1)
}

func logOpt() kgo.Opt {
	return kgo.WithLogger(kgo.BasicLogger(os.Stderr, kgo.LogLevelDebug, func() string {
		return time.Now().Format("15:04:05.000 ")
	}))
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		fail("bad number %q", s)
	}
	return n
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: txn produce|consume|etl ...")
	}
	args := os.Args[2:]
	need := map[string]int{"produce": 4, "consume": 5, "etl": 7}[os.Args[1]]
	if need == 0 || len(args) != need {
		fail("usage: see main.go (%s takes %d arguments)", os.Args[1], need)
	}
	switch os.Args[1] {
	case "produce":
		produce(args[0], args[1], args[2], atoi(args[3]))
	case "consume":
		consume(args[0], args[1], args[2] == "rc", atoi(args[3]), args[4])
	case "etl":
		etl(args[0], args[1], args[2], args[3], args[4], atoi(args[5]), atoi(args[6]))
	}
}

func produce(bootstrap, topic, txid string, n int) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(bootstrap),
		kgo.TransactionalID(txid),
		kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		logOpt(),
	)
	if err != nil {
		fail("client: %v", err)
	}
	defer cl.Close()
	for _, tx := range []struct {
		name   string
		commit kgo.TransactionEndTry
	}{{"c1", kgo.TryCommit}, {"a2", kgo.TryAbort}, {"c3", kgo.TryCommit}} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := cl.BeginTransaction(); err != nil {
			fail("begin %s: %v", tx.name, err)
		}
		recs := make([]*kgo.Record, n)
		for i := range recs {
			recs[i] = &kgo.Record{Partition: int32(i % 2), Value: []byte(fmt.Sprintf("%s-%d", tx.name, i))}
		}
		// ProduceSync: every record is written (acknowledged) before the transaction ends, so the
		// aborted transaction's records are really in the log.
		res := cl.ProduceSync(ctx, recs...)
		if err := res.FirstErr(); err != nil {
			fail("produce %s: %v", tx.name, err)
		}
		for _, r := range res {
			fmt.Printf("produced %s %d %d %s\n", tx.name, r.Record.Partition, r.Record.Offset, r.Record.Value)
		}
		if err := cl.EndTransaction(ctx, tx.commit); err != nil {
			fail("end %s (commit=%v): %v", tx.name, bool(tx.commit), err)
		}
		how := "aborted"
		if tx.commit {
			how = "committed"
		}
		fmt.Printf("ended %s %s\n", tx.name, how)
		cancel()
	}
}

func consume(bootstrap, topic string, committed bool, partitions int, sentinel string) {
	level := kgo.ReadUncommitted()
	if committed {
		level = kgo.ReadCommitted()
	}
	offsets := map[int32]kgo.Offset{}
	for p := 0; p < partitions; p++ {
		offsets[int32(p)] = kgo.NewOffset().AtStart()
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(bootstrap),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}),
		kgo.FetchIsolationLevel(level),
		kgo.FetchMaxWait(500*time.Millisecond),
		logOpt(),
	)
	if err != nil {
		fail("client: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	done := map[int32]bool{}
	var out []*kgo.Record
	for len(done) < partitions {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			fail("timed out: sentinel read on %d of %d partitions, %d records", len(done), partitions, len(out))
		}
		for _, e := range fs.Errors() {
			fail("fetch %s[%d]: %v", e.Topic, e.Partition, e.Err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			switch {
			case done[r.Partition]:
			case string(r.Value) == sentinel:
				done[r.Partition] = true
			default:
				out = append(out, r)
			}
		})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Partition < out[j].Partition })
	for _, r := range out {
		fmt.Printf("record %d %d %s\n", r.Partition, r.Offset, r.Value)
	}
}

func etl(bootstrap, group, in, out, txid string, maxPoll, hangAt int) {
	var stop atomic.Bool
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; stop.Store(true) }()

	sess, err := kgo.NewGroupTransactSession(
		kgo.SeedBrokers(bootstrap),
		kgo.TransactionalID(txid),
		kgo.TransactionTimeout(20*time.Second),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(in),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.SessionTimeout(6*time.Second),
		kgo.HeartbeatInterval(500*time.Millisecond),
		kgo.RebalanceTimeout(20*time.Second),
		kgo.DefaultProduceTopic(out),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		logOpt(),
	)
	if err != nil {
		fail("session: %v", err)
	}
	deadline := time.Now().Add(100 * time.Second) // liveness bound: the test stops us well before
	batch := 0
	for !stop.Load() {
		if time.Now().After(deadline) {
			fail("still running after 100s (batch %d)", batch)
		}
		pctx, pcancel := context.WithTimeout(context.Background(), time.Second)
		fs := sess.PollRecords(pctx, maxPoll)
		pcancel()
		if fs.IsClientClosed() {
			fail("client closed")
		}
		for _, e := range fs.Errors() {
			if errors.Is(e.Err, context.DeadlineExceeded) {
				continue
			}
			fail("fetch %s[%d]: %v", e.Topic, e.Partition, e.Err)
		}
		var recs []*kgo.Record
		next := map[int32]int64{}
		fs.EachRecord(func(r *kgo.Record) {
			recs = append(recs, &kgo.Record{Partition: r.Partition, Key: r.Key,
				Value: append([]byte("etl:"), r.Value...)})
			next[r.Partition] = r.Offset + 1
		})
		if len(recs) == 0 {
			continue
		}
		batch++
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := sess.Begin(); err != nil {
			fail("begin batch %d: %v", batch, err)
		}
		if err := sess.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			fail("produce batch %d: %v", batch, err)
		}
		fmt.Printf("produced %d %d\n", batch, len(recs))
		if batch == hangAt {
			fmt.Println("hanging")
			time.Sleep(90 * time.Second)
			fail("not killed while hanging")
		}
		committed, err := sess.End(ctx, kgo.TryCommit)
		cancel()
		if err != nil {
			fail("end batch %d: %v", batch, err)
		}
		if !committed {
			fmt.Printf("aborted %d %d\n", batch, len(recs))
			continue
		}
		var parts []string
		for p, o := range next {
			parts = append(parts, fmt.Sprintf("%d:%d", p, o))
		}
		sort.Strings(parts)
		fmt.Printf("committed %d %d %s\n", batch, len(recs), strings.Join(parts, ","))
	}
	sess.Close()
	fmt.Println("closed")
}
