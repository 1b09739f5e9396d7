package state

import (
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// testDB opens a database in a fresh temp dir and closes it at cleanup.
func testDB(t *testing.T, opts Options) (*DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.db")
	d, err := Open(path, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, d.Close())
	})
	return d, path
}

func reopen(t *testing.T, d *DB, opts Options) *DB {
	t.Helper()
	require.NoError(t, d.Close())
	d2, err := Open(d.Path(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, d2.Close()) })
	return d2
}

func result(id string) *agentv1.CheckResult {
	return &agentv1.CheckResult{
		CheckId: id,
		Status:  agentv1.CheckStatus_CHECK_STATUS_OK,
		Output:  "ok: " + id,
		Metrics: map[string]float64{"n": 1},
	}
}

func results(n int) []*agentv1.CheckResult {
	out := make([]*agentv1.CheckResult, n)
	for i := range out {
		out[i] = result(fmt.Sprintf("c%d", i))
	}
	return out
}

func seqs(rs []*agentv1.CheckResult) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.GetSeq()
	}
	return out
}

func span(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func TestSeqMonotonicAcrossReopen(t *testing.T) {
	d, _ := testDB(t, Options{})
	pending, dropped, next := d.Stats()
	require.Equal(t, [3]uint64{0, 0, 1}, [3]uint64{pending, dropped, next})

	rs := results(3)
	require.NoError(t, d.Append(rs...))
	require.Equal(t, []uint64{1, 2, 3}, seqs(rs))
	require.NoError(t, d.Ack(3)) // outbox empty now

	d = reopen(t, d, Options{})
	pending, _, next = d.Stats()
	require.Equal(t, uint64(0), pending)
	require.Equal(t, uint64(4), next, "next seq must survive a reopen with an empty outbox")

	r := result("after")
	require.NoError(t, d.Append(r))
	require.Equal(t, uint64(4), r.GetSeq())

	d = reopen(t, d, Options{})
	r = result("again")
	require.NoError(t, d.Append(r))
	require.Equal(t, uint64(5), r.GetSeq())
}

func TestAppendPendingAck(t *testing.T) {
	d, _ := testDB(t, Options{})
	in := results(10)
	in[3].Duration = durationpb.New(1500 * time.Millisecond)
	require.NoError(t, d.Append(in[:4]...))
	require.NoError(t, d.Append(in[4:]...))
	require.Equal(t, span(1, 10), seqs(in))

	got, err := d.Pending(0, 4)
	require.NoError(t, err)
	require.Equal(t, span(1, 4), seqs(got))
	for i, r := range got {
		require.True(t, proto.Equal(in[i], r), "result %d round-trips", i)
	}

	got, err = d.Pending(4, 100)
	require.NoError(t, err)
	require.Equal(t, span(5, 10), seqs(got))

	got, err = d.Pending(0, 0)
	require.NoError(t, err)
	require.Len(t, got, 10, "max 0 means no limit")

	require.NoError(t, d.Ack(6))
	pending, dropped, next := d.Stats()
	require.Equal(t, [3]uint64{4, 0, 11}, [3]uint64{pending, dropped, next})
	got, err = d.Pending(0, 100)
	require.NoError(t, err)
	require.Equal(t, span(7, 10), seqs(got))

	// Acking again, or lower, changes nothing.
	require.NoError(t, d.Ack(6))
	require.NoError(t, d.Ack(2))
	require.NoError(t, d.Ack(0))
	pending, _, _ = d.Stats()
	require.Equal(t, uint64(4), pending)

	got, err = d.Pending(10, 100)
	require.NoError(t, err)
	require.Empty(t, got)

	require.NoError(t, d.Append()) // nothing to do
	require.Error(t, d.Append(result("x"), nil))
	require.NoError(t, d.Check())
}

func TestAckBeyondPending(t *testing.T) {
	d, _ := testDB(t, Options{})
	require.NoError(t, d.Append(results(3)...))

	// The control plane knows more than this database (restored backup).
	require.NoError(t, d.Ack(100))
	pending, _, next := d.Stats()
	require.Equal(t, uint64(0), pending)
	require.Equal(t, uint64(101), next, "new results must not reuse seqs the control plane has")

	r := result("new")
	require.NoError(t, d.Append(r))
	require.Equal(t, uint64(101), r.GetSeq())

	d = reopen(t, d, Options{})
	pending, _, next = d.Stats()
	require.Equal(t, uint64(1), pending)
	require.Equal(t, uint64(102), next)
}

func TestOutboxBoundDropsOldest(t *testing.T) {
	d, _ := testDB(t, Options{OutboxMax: 5})
	for i := 0; i < 8; i++ {
		require.NoError(t, d.Append(result(fmt.Sprint(i))))
	}
	pending, dropped, next := d.Stats()
	require.Equal(t, [3]uint64{5, 3, 9}, [3]uint64{pending, dropped, next})
	got, err := d.Pending(0, 0)
	require.NoError(t, err)
	require.Equal(t, span(4, 8), seqs(got), "the oldest results are the ones dropped")

	// One append larger than the bound keeps its newest results.
	require.NoError(t, d.Append(results(7)...))
	pending, dropped, next = d.Stats()
	require.Equal(t, [3]uint64{5, 10, 16}, [3]uint64{pending, dropped, next})
	got, err = d.Pending(0, 0)
	require.NoError(t, err)
	require.Equal(t, span(11, 15), seqs(got))

	// The counters survive a reopen; a smaller bound applies at once.
	d = reopen(t, d, Options{OutboxMax: 2})
	pending, dropped, next = d.Stats()
	require.Equal(t, [3]uint64{2, 13, 16}, [3]uint64{pending, dropped, next})
	got, err = d.Pending(0, 0)
	require.NoError(t, err)
	require.Equal(t, span(14, 15), seqs(got))

	// Acked results free room: nothing more is dropped.
	require.NoError(t, d.Ack(15))
	require.NoError(t, d.Append(results(2)...))
	pending, dropped, _ = d.Stats()
	require.Equal(t, [2]uint64{2, 13}, [2]uint64{pending, dropped})
	require.NoError(t, d.Check())
}

func TestConcurrentAppend(t *testing.T) {
	d, _ := testDB(t, Options{})
	const goroutines, each = 50, 40
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		all []uint64
	)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				rs := results(1 + i%3)
				if err := d.Append(rs...); err != nil {
					t.Error(err)
					return
				}
				for j := 1; j < len(rs); j++ {
					if rs[j].GetSeq() != rs[j-1].GetSeq()+1 {
						t.Errorf("one append's results got non-consecutive seqs %v", seqs(rs))
					}
				}
				mu.Lock()
				all = append(all, seqs(rs)...)
				mu.Unlock()
			}
		}()
	}
	// Readers and ackers run alongside.
	stop := make(chan struct{})
	var rwg sync.WaitGroup
	rwg.Add(1)
	go func() {
		defer rwg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			rs, err := d.Pending(0, 50)
			if err != nil {
				t.Error(err)
				return
			}
			for i := 1; i < len(rs); i++ {
				if rs[i].GetSeq() <= rs[i-1].GetSeq() {
					t.Errorf("pending out of order: %v", seqs(rs))
				}
			}
			d.Stats()
		}
	}()
	wg.Wait()
	close(stop)
	rwg.Wait()

	total := uint64(len(all))
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	require.Equal(t, span(1, total), all, "every seq exactly once, none missing")
	pending, dropped, next := d.Stats()
	require.Equal(t, [3]uint64{total, 0, total + 1}, [3]uint64{pending, dropped, next})
	require.Less(t, d.commits.Load(), uint64(goroutines*each), "appends were group-committed")
	require.NoError(t, d.Check())
}

func TestAppendGroupCommit(t *testing.T) {
	d, _ := testDB(t, Options{})
	const n = 50
	// Hold the writer so that every Append queues up behind it.
	d.writeMu.Lock()
	before := d.commits.Load()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.Append(result("g")); err != nil {
				t.Error(err)
			}
		}()
	}
	// The committer holds at most one batch while it waits for the lock;
	// the rest wait in the queue.
	require.Eventually(t, func() bool {
		return d.inCommit.Load()+int64(len(d.appendCh)) == n
	}, 5*time.Second, time.Millisecond)
	d.writeMu.Unlock()
	wg.Wait()
	require.LessOrEqual(t, d.commits.Load()-before, uint64(2), "%d appends share at most two transactions", n)
	pending, _, _ := d.Stats()
	require.Equal(t, uint64(n), pending)
}

func TestAppendBadResultFailsAlone(t *testing.T) {
	d, _ := testDB(t, Options{})
	bad := result("bad")
	bad.Output = "\xff\xfe not utf-8"
	require.Error(t, d.Append(bad))
	require.Zero(t, bad.GetSeq())

	good := result("good")
	require.NoError(t, d.Append(good))
	require.Equal(t, uint64(1), good.GetSeq(), "a failed append uses no sequence number")
}

func TestAssignmentRoundTrip(t *testing.T) {
	d, _ := testDB(t, Options{})
	a, err := d.LoadAssignment()
	require.NoError(t, err)
	require.Nil(t, a)

	want := &agentv1.CheckAssignment{
		Generation: 7,
		Checks: []*agentv1.CheckSpec{{
			Id:            "web-nginx-down",
			PolicyVersion: 3,
			Interval:      durationpb.New(5 * time.Second),
			Timeout:       durationpb.New(2 * time.Second),
			Check:         &agentv1.CheckSpec_Http{Http: &agentv1.HttpCheck{Url: "http://127.0.0.1:8080/healthz", ExpectStatus: 200}},
		}},
	}
	require.NoError(t, d.SaveAssignment(want))
	require.NoError(t, d.Put("agent_id", []byte("a-123")))

	d = reopen(t, d, Options{})
	got, err := d.LoadAssignment()
	require.NoError(t, err)
	require.True(t, proto.Equal(want, got), "got %v", got)

	v, err := d.Get("agent_id")
	require.NoError(t, err)
	require.Equal(t, []byte("a-123"), v)
	v, err = d.Get("missing")
	require.NoError(t, err)
	require.Nil(t, v)
	require.NoError(t, d.Delete("agent_id"))
	v, err = d.Get("agent_id")
	require.NoError(t, err)
	require.Nil(t, v)

	require.Error(t, d.Put(keySchemaVersion, []byte("x")), "reserved key")
	require.Error(t, d.Put("", []byte("x")))
	require.Error(t, d.SaveAssignment(nil))
}

func TestSchemaVersionRefusal(t *testing.T) {
	d, path := testDB(t, Options{})
	require.NoError(t, d.Close())

	bdb, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, bdb.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put([]byte(keySchemaVersion), u64(SchemaVersion+1))
	}))
	require.NoError(t, bdb.Close())

	_, err = Open(path, Options{})
	require.ErrorIs(t, err, ErrSchemaTooNew)
	require.ErrorContains(t, err, "schema version 2")
	require.ErrorContains(t, err, "up to 1")

	// The refusal left the file as it was, and unlocked.
	bdb, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	require.NoError(t, err)
	require.NoError(t, bdb.View(func(tx *bolt.Tx) error {
		require.Equal(t, SchemaVersion+1, getU64(tx.Bucket(bucketMeta), []byte(keySchemaVersion)))
		return nil
	}))
	require.NoError(t, bdb.Close())
}

func TestSchemaVersionWritten(t *testing.T) {
	d, _ := testDB(t, Options{})
	require.NoError(t, d.bolt.View(func(tx *bolt.Tx) error {
		require.Equal(t, SchemaVersion, getU64(tx.Bucket(bucketMeta), []byte(keySchemaVersion)))
		return nil
	}))
}

func TestOpenInUse(t *testing.T) {
	_, path := testDB(t, Options{})
	_, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	require.ErrorIs(t, err, ErrInUse)
	require.ErrorContains(t, err, "data dir in use by another tend-agent")
	require.ErrorContains(t, err, path)
}

func TestAppendAfterClose(t *testing.T) {
	d, _ := testDB(t, Options{})
	require.NoError(t, d.Close())
	require.ErrorIs(t, d.Append(result("late")), ErrClosed)
	require.NoError(t, d.Close(), "Close twice is fine")
}

// stored counts the results in the file, deferred acks not applied.
func stored(t *testing.T, d *DB) int {
	t.Helper()
	n := 0
	require.NoError(t, d.bolt.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketOutbox).Stats().KeyN
		return nil
	}))
	return n
}

func TestAckDeferredUntilNextAppendOrClose(t *testing.T) {
	d, _ := testDB(t, Options{AckDelay: time.Hour})
	require.NoError(t, d.Append(results(10)...))
	commits := d.commits.Load()
	require.NoError(t, d.Ack(4))
	rs, err := d.Pending(0, 0)
	require.NoError(t, err)
	require.Equal(t, span(5, 10), seqs(rs), "acknowledged results are not pending, at once")
	pending, _, next := d.Stats()
	require.Equal(t, uint64(6), pending)
	require.Equal(t, uint64(11), next)
	require.Equal(t, 10, stored(t, d), "the deletion waits")

	require.NoError(t, d.Append(result("x")))
	require.Equal(t, commits+1, d.commits.Load())
	require.Equal(t, 7, stored(t, d), "the next append's transaction deletes them")
	pending, _, _ = d.Stats()
	require.Equal(t, uint64(7), pending)

	require.NoError(t, d.Ack(8))
	require.NoError(t, d.Ack(6), "an older ack changes nothing")
	d = reopen(t, d, Options{AckDelay: time.Hour})
	rs, err = d.Pending(0, 0)
	require.NoError(t, err)
	require.Equal(t, span(9, 11), seqs(rs), "Close writes the deferred ack")
	require.Equal(t, 3, stored(t, d))
}

func TestAckDeferredWrittenAfterDelay(t *testing.T) {
	d, _ := testDB(t, Options{AckDelay: 20 * time.Millisecond})
	require.NoError(t, d.Append(results(5)...))
	require.NoError(t, d.Ack(3))
	require.Eventually(t, func() bool { return stored(t, d) == 2 }, 10*time.Second, 5*time.Millisecond)
	pending, _, _ := d.Stats()
	require.Equal(t, uint64(2), pending)
}

func TestAckDeferredIsNotDroppedWhenFull(t *testing.T) {
	d, _ := testDB(t, Options{AckDelay: time.Hour, OutboxMax: 5})
	require.NoError(t, d.Append(results(5)...))
	require.NoError(t, d.Ack(3))
	require.NoError(t, d.Append(results(3)...))
	pending, dropped, _ := d.Stats()
	require.Equal(t, uint64(5), pending)
	require.Zero(t, dropped, "acknowledged results leave before the bound is applied")
	rs, err := d.Pending(0, 0)
	require.NoError(t, err)
	require.Equal(t, span(4, 8), seqs(rs))
}

func TestAckImmediateWithNegativeDelay(t *testing.T) {
	d, _ := testDB(t, Options{AckDelay: -1})
	require.NoError(t, d.Append(results(5)...))
	require.NoError(t, d.Ack(3))
	require.Equal(t, 2, stored(t, d))
}
