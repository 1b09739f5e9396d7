package ingest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/controlplane/store/bolt"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// spyStore wraps a store and records every CommitResults call. If gate is
// set, each call first reports on entered and then waits for a token on
// gate, so that a test can hold a commit while batches queue up.
type spyStore struct {
	store.Store
	gate    chan struct{}
	entered chan struct{}
	fail    atomic.Pointer[error]
	panic   atomic.Bool

	mu    sync.Mutex
	calls [][]store.ResultBatch
}

func (s *spyStore) CommitResults(bs []store.ResultBatch) ([]store.CommitOutcome, error) {
	s.mu.Lock()
	s.calls = append(s.calls, bs)
	s.mu.Unlock()
	if s.entered != nil {
		s.entered <- struct{}{}
	}
	if s.gate != nil {
		<-s.gate
	}
	if s.panic.Load() {
		panic("disk on fire")
	}
	if err := s.fail.Load(); err != nil {
		return nil, *err
	}
	if s.Store == nil {
		outs := make([]store.CommitOutcome, len(bs))
		for i, b := range bs {
			outs[i] = store.CommitOutcome{Stored: len(b.Results)}
			if n := len(b.Results); n > 0 {
				outs[i].AckedThrough = b.Results[n-1].GetSeq()
			}
		}
		return outs, nil
	}
	return s.Store.CommitResults(bs)
}

func (s *spyStore) callSizes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, len(s.calls))
	for i, c := range s.calls {
		out[i] = len(c)
	}
	return out
}

func (s *spyStore) numCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

// held returns a spy (over no store) whose commits wait for release.
func held() *spyStore {
	return &spyStore{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
}

func (s *spyStore) release() { s.gate <- struct{}{} }

// releaseAllUntil lets the held commit and every later one through until
// wait returns, then stops reporting on entered.
func (s *spyStore) releaseAllUntil(wait func()) {
	go func() {
		for range s.entered {
			s.release()
		}
	}()
	s.release()
	wait()
	close(s.entered)
}

// boltStore opens a real store with n enrolled agents a0..a<n-1>.
func boltStore(t testing.TB, n int) *bolt.Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tend.db")
	// Enroll without fsync, then reopen with it.
	st, err := bolt.Open(path, bolt.Options{NoSync: true, HistoryPerCheck: 1000})
	require.NoError(t, err)
	require.NoError(t, st.CreateToken(store.Token{ID: "t", SecretHash: []byte("h"), Uses: uint32(n) + 1}))
	for i := range n {
		id := fmt.Sprintf("a%d", i)
		require.NoError(t, st.EnrollAgent("t", []byte("h"), time.Now(), store.Agent{ID: id, Name: "host-" + id}))
	}
	require.NoError(t, st.Close())
	st, err = bolt.Open(path, bolt.Options{HistoryPerCheck: 1000})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func batch(agent string, from, to uint64) store.ResultBatch {
	b := store.ResultBatch{AgentID: agent}
	for seq := from; seq <= to; seq++ {
		b.Results = append(b.Results, &agentv1.CheckResult{
			Seq: seq, CheckId: fmt.Sprintf("check-%d", seq%3), Status: agentv1.CheckStatus_CHECK_STATUS_OK, Output: "ok",
		})
	}
	return b
}

func started(t testing.TB, st store.Store, opts Options) *Committer {
	t.Helper()
	c := New(st, opts, nil)
	c.Start()
	t.Cleanup(c.Stop)
	return c
}

// metric returns a counter's or gauge's value, or a histogram's sample count.
func metric(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func TestConcurrentSubmittersExactlyOnce(t *testing.T) {
	const agents, batches, per = 40, 15, 4
	spy := &spyStore{Store: boltStore(t, agents)}
	reg := prometheus.NewRegistry()
	c := started(t, spy, Options{Registerer: reg})

	var wg sync.WaitGroup
	for i := range agents {
		id := fmt.Sprintf("a%d", i)
		for resend := range 2 { // every batch twice, concurrently: a reconnect resending its outbox
			wg.Go(func() {
				for b := range uint64(batches) {
					out, err := c.Submit(context.Background(), batch(id, b*per+1, b*per+per))
					assert.NoError(t, err)
					assert.GreaterOrEqual(t, out.AckedThrough, b*per+per, "resend %d", resend)
					assert.Equal(t, per, out.Stored+out.Duplicates)
				}
			})
		}
	}
	wg.Wait()

	for i := range agents {
		id := fmt.Sprintf("a%d", i)
		cnt, err := spy.Store.Counters(id)
		require.NoError(t, err)
		require.Equal(t, store.AgentCounters{ResultsStored: batches * per, HighWater: batches * per}, cnt)
		var got []uint64
		for check := range 3 {
			rs, err := spy.Store.ListResults(id, fmt.Sprintf("check-%d", check), 0)
			require.NoError(t, err)
			for _, r := range rs {
				got = append(got, r.GetSeq())
			}
		}
		require.Len(t, got, batches*per, "each result once")
	}
	total := agents * batches * 2
	commits := spy.numCalls()
	t.Logf("%d batches in %d commits", total, commits)
	require.Less(t, commits, total, "batches were grouped")
	require.Equal(t, float64(commits), metric(t, reg, "tend_ingest_commits_total"))
	require.Equal(t, float64(agents*batches*per), metric(t, reg, "tend_ingest_results_total"))
	require.Equal(t, float64(agents*batches*per), metric(t, reg, "tend_ingest_duplicates_total"))
	require.Equal(t, float64(commits), metric(t, reg, "tend_ingest_commit_seconds"))
	require.Equal(t, float64(commits), metric(t, reg, "tend_ingest_batch_results"))
	require.Zero(t, metric(t, reg, "tend_ingest_queue_depth"))
	require.NoError(t, spy.Store.(*bolt.Store).Verify())
}

func TestGroupCommit(t *testing.T) {
	spy := held()
	reg := prometheus.NewRegistry()
	c := started(t, spy, Options{Registerer: reg})

	// The first batch is committed alone and held there.
	first := make(chan error, 1)
	c.SubmitAsync(batch("a0", 1, 1), func(_ store.CommitOutcome, err error) { first <- err })
	<-spy.entered

	// Ten more queue up behind it...
	var answered atomic.Int32
	for i := range 10 {
		c.SubmitAsync(batch(fmt.Sprintf("a%d", i+1), 1, 2), func(out store.CommitOutcome, err error) {
			assert.NoError(t, err)
			assert.Equal(t, 2, out.Stored)
			answered.Add(1)
		})
	}
	require.Equal(t, float64(10), metric(t, reg, "tend_ingest_queue_depth"))
	spy.release()
	require.NoError(t, <-first)

	// ... and go in one commit.
	<-spy.entered
	spy.release()
	require.Eventually(t, func() bool { return answered.Load() == 10 }, 5*time.Second, time.Millisecond)
	require.Equal(t, []int{1, 10}, spy.callSizes())
	require.Equal(t, float64(21), metric(t, reg, "tend_ingest_results_total"))
}

func TestMaxBatchResults(t *testing.T) {
	spy := held()
	c := started(t, spy, Options{MaxBatchResults: 7})

	var wg sync.WaitGroup
	submit := func(b store.ResultBatch) {
		wg.Add(1)
		c.SubmitAsync(b, func(_ store.CommitOutcome, err error) {
			assert.NoError(t, err)
			wg.Done()
		})
	}
	submit(batch("hold", 1, 1))
	<-spy.entered
	for i := range 5 {
		submit(batch(fmt.Sprintf("a%d", i), 1, 3)) // 3 results each: two fit in 7
	}
	submit(batch("big", 1, 20)) // larger than the cap: alone
	submit(batch("last", 1, 1))
	spy.releaseAllUntil(wg.Wait)
	require.Equal(t, []int{1, 2, 2, 1, 1, 1}, spy.callSizes())
}

func TestStoreErrorFailsTheGroup(t *testing.T) {
	spy := held()
	reg := prometheus.NewRegistry()
	c := started(t, spy, Options{Registerer: reg})
	diskFull := errors.New("no space left on device")
	spy.fail.Store(&diskFull)

	errs := make(chan error, 10)
	c.SubmitAsync(batch("hold", 1, 1), func(_ store.CommitOutcome, err error) { errs <- err })
	<-spy.entered
	for i := range 4 {
		c.SubmitAsync(batch(fmt.Sprintf("a%d", i), 1, 2), func(out store.CommitOutcome, err error) {
			assert.Zero(t, out)
			errs <- err
		})
	}
	spy.release()
	<-spy.entered
	spy.release()
	for range 5 {
		err := <-errs
		require.ErrorIs(t, err, diskFull)
	}
	require.Equal(t, float64(2), metric(t, reg, "tend_ingest_commit_errors_total"))
	require.Zero(t, metric(t, reg, "tend_ingest_results_total"))

	// The store recovers: the next commit works.
	spy.fail.Store(nil)
	go spy.release()
	out, err := c.Submit(context.Background(), batch("a0", 1, 2))
	require.NoError(t, err)
	require.Equal(t, 2, out.Stored)
}

func TestStorePanicIsAnError(t *testing.T) {
	spy := &spyStore{}
	spy.panic.Store(true)
	c := started(t, spy, Options{})
	_, err := c.Submit(context.Background(), batch("a0", 1, 1))
	require.ErrorContains(t, err, "store panicked: disk on fire")
	spy.panic.Store(false)
	_, err = c.Submit(context.Background(), batch("a0", 1, 1))
	require.NoError(t, err, "the loop survived")
}

func TestRefusedBatchAlone(t *testing.T) {
	st := boltStore(t, 2)
	require.NoError(t, st.UpdateAgent("a1", func(a *store.Agent) error { a.Revoked = true; return nil }))
	spy := held()
	spy.Store = st
	reg := prometheus.NewRegistry()
	c := started(t, spy, Options{Registerer: reg})

	type answer struct {
		out store.CommitOutcome
		err error
	}
	ans := make([]chan answer, 4)
	for i, id := range []string{"a0", "ghost", "a1", "a0"} {
		ans[i] = make(chan answer, 1)
		c.SubmitAsync(batch(id, uint64(i*10+1), uint64(i*10+2)), func(out store.CommitOutcome, err error) { ans[i] <- answer{out, err} })
		if i == 0 {
			<-spy.entered // hold the first, the other three form one group
		}
	}
	spy.release()
	<-spy.entered
	spy.release()
	a0, ghost, revoked, a0again := <-ans[0], <-ans[1], <-ans[2], <-ans[3]
	require.NoError(t, a0.err)
	require.ErrorIs(t, ghost.err, store.ErrNotFound)
	require.ErrorIs(t, revoked.err, store.ErrRevoked)
	require.NoError(t, a0again.err)
	require.Equal(t, store.CommitOutcome{Stored: 2, AckedThrough: 32}, a0again.out)
	require.Equal(t, []int{1, 3}, spy.callSizes())
	require.Equal(t, float64(2), metric(t, reg, "tend_ingest_refused_batches_total"))
}

func TestStopDrains(t *testing.T) {
	spy := held()
	c := New(spy, Options{}, nil)
	c.Start()

	var answered atomic.Int32
	c.SubmitAsync(batch("a0", 1, 1), func(_ store.CommitOutcome, err error) { assert.NoError(t, err); answered.Add(1) })
	<-spy.entered
	for i := range 20 {
		c.SubmitAsync(batch(fmt.Sprintf("a%d", i), 1, 1), func(_ store.CommitOutcome, err error) { assert.NoError(t, err); answered.Add(1) })
	}
	stopped := make(chan struct{})
	go func() {
		c.Stop()
		close(stopped)
	}()
	// New batches are refused as soon as Stop has begun.
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.stopping
	}, 5*time.Second, time.Millisecond)
	_, err := c.Submit(context.Background(), batch("late", 1, 1))
	require.ErrorIs(t, err, ErrStopped)
	refused := make(chan error, 1)
	c.SubmitAsync(batch("late", 1, 1), func(_ store.CommitOutcome, err error) { refused <- err })
	require.ErrorIs(t, <-refused, ErrStopped)

	select {
	case <-stopped:
		t.Fatal("Stop returned before the queue was committed")
	default:
	}
	spy.release() // the held commit
	<-spy.entered
	spy.release() // the drained queue
	<-stopped
	require.Equal(t, int32(21), answered.Load(), "everything queued before Stop was committed and answered")
	require.Equal(t, []int{1, 20}, spy.callSizes())
	c.Stop() // again: no-op
}

func TestStopWithoutStart(t *testing.T) {
	spy := &spyStore{}
	c := New(spy, Options{}, nil)
	done := make(chan error, 1)
	c.SubmitAsync(batch("a0", 1, 1), func(_ store.CommitOutcome, err error) { done <- err })
	c.Stop()
	require.NoError(t, <-done)
	require.Equal(t, []int{1}, spy.callSizes())
	c.Start() // after Stop: nothing
	_, err := c.Submit(context.Background(), batch("a0", 2, 2))
	require.ErrorIs(t, err, ErrStopped)
}

func TestSubmitContext(t *testing.T) {
	spy := held()
	c := started(t, spy, Options{})

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.Submit(ctx, batch("a0", 1, 1))
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, spy.numCalls(), "a batch with a done context is not queued")

	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = c.Submit(ctx, batch("a0", 1, 1))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	<-spy.entered
	spy.release() // the batch is still committed; a resend will be a duplicate
	require.Eventually(t, func() bool { return spy.numCalls() == 1 }, 5*time.Second, time.Millisecond)
}

func TestMaxDelayGathers(t *testing.T) {
	spy := &spyStore{}
	c := started(t, spy, Options{MaxDelay: 300 * time.Millisecond})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		c.SubmitAsync(batch(fmt.Sprintf("a%d", i), 1, 1), func(_ store.CommitOutcome, err error) { assert.NoError(t, err); wg.Done() })
	}
	wg.Wait()
	require.Equal(t, []int{3}, spy.callSizes())

	// A full group does not wait for the delay.
	c2 := started(t, spy, Options{MaxDelay: time.Hour, MaxBatchResults: 2})
	out, err := c2.Submit(context.Background(), batch("a0", 1, 2))
	require.NoError(t, err)
	require.Equal(t, 2, out.Stored)
}

func TestMinIntervalPacesCommits(t *testing.T) {
	spy := &spyStore{}
	reg := prometheus.NewRegistry()
	c := started(t, spy, Options{MinInterval: time.Hour, Registerer: reg})
	// The first batch is committed at once: nothing was committed before.
	_, err := c.Submit(context.Background(), batch("a0", 1, 1))
	require.NoError(t, err)
	// The next ones arrive within the interval: they wait, together, for
	// it (or for a full group, or for Stop).
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		c.SubmitAsync(batch(fmt.Sprintf("a%d", i+1), 1, 1), func(_ store.CommitOutcome, err error) { assert.NoError(t, err); wg.Done() })
	}
	require.Eventually(t, func() bool { return metric(t, reg, "tend_ingest_paced_total") == 1 }, 5*time.Second, time.Millisecond)
	require.Equal(t, []int{1}, spy.callSizes())
	c.Stop()
	wg.Wait()
	require.Equal(t, []int{1, 3}, spy.callSizes())
}

func TestMinIntervalFullGroupGoesAtOnce(t *testing.T) {
	spy := &spyStore{}
	c := started(t, spy, Options{MinInterval: time.Hour, MaxBatchResults: 2})
	_, err := c.Submit(context.Background(), batch("a0", 1, 1))
	require.NoError(t, err)
	// A full group does not wait for the interval.
	out, err := c.Submit(context.Background(), batch("a1", 1, 2))
	require.NoError(t, err)
	require.Equal(t, 2, out.Stored)
	require.Equal(t, []int{1, 1}, spy.callSizes())
}

func TestQueueIsBounded(t *testing.T) {
	spy := held()
	reg := prometheus.NewRegistry()
	c := started(t, spy, Options{MaxQueuedResults: 5, Registerer: reg})

	var answered atomic.Int32
	ok := func(_ store.CommitOutcome, err error) { assert.NoError(t, err); answered.Add(1) }
	// Hold the first commit: the next batches queue behind it.
	c.SubmitAsync(batch("hold", 1, 1), ok)
	<-spy.entered
	c.SubmitAsync(batch("a1", 1, 3), ok)
	c.SubmitAsync(batch("a2", 1, 2), ok) // 5 queued: full

	returned := make(chan struct{})
	go func() {
		c.SubmitAsync(batch("a3", 1, 1), ok)
		close(returned)
	}()
	require.Eventually(t, func() bool { return metric(t, reg, "tend_ingest_queue_full_waits_total") == 1 }, 5*time.Second, time.Millisecond)
	select {
	case <-returned:
		t.Fatal("SubmitAsync returned while the queue was full")
	default:
	}
	// The next commit takes the queue: room again.
	spy.release()
	<-spy.entered
	<-returned
	spy.release()
	<-spy.entered
	spy.release()
	require.Eventually(t, func() bool { return answered.Load() == 4 }, 5*time.Second, time.Millisecond)
	require.Equal(t, []int{1, 2, 1}, spy.callSizes())

	// A batch larger than the bound goes into an empty queue.
	go func() {
		<-spy.entered
		spy.release()
	}()
	out, err := c.Submit(context.Background(), batch("big", 1, 9))
	require.NoError(t, err)
	require.Equal(t, 9, out.Stored)
}

func TestStopReleasesBatchesWaitingForRoom(t *testing.T) {
	spy := held()
	c := New(spy, Options{MaxQueuedResults: 2}, nil)
	c.Start()
	c.SubmitAsync(batch("hold", 1, 1), func(store.CommitOutcome, error) {})
	<-spy.entered
	c.SubmitAsync(batch("a1", 1, 2), func(store.CommitOutcome, error) {}) // full
	refused := make(chan error, 1)
	go func() {
		_, err := c.Submit(context.Background(), batch("a2", 1, 1))
		refused <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := c.Submit(ctx, batch("a3", 1, 1))
	require.ErrorIs(t, err, context.DeadlineExceeded, "a context ends the wait for room")

	stopped := make(chan struct{})
	go func() {
		c.Stop()
		close(stopped)
	}()
	require.ErrorIs(t, <-refused, ErrStopped)
	spy.release() // the held commit
	<-spy.entered
	spy.release() // the drained queue
	<-stopped
	require.Equal(t, []int{1, 1}, spy.callSizes())
}

func TestBatchesWaitingForRoomGoInInOrder(t *testing.T) {
	spy := held()
	reg := prometheus.NewRegistry()
	c := started(t, spy, Options{MaxQueuedResults: 3, Registerer: reg})
	c.SubmitAsync(batch("hold", 1, 1), func(store.CommitOutcome, error) {})
	<-spy.entered
	c.SubmitAsync(batch("a1", 1, 3), func(store.CommitOutcome, error) {}) // full

	// b1 (3 results) waits first, then b2 (1 result): b2 does not overtake
	// b1, although it would fit before b1 does.
	var wg sync.WaitGroup
	for i, b := range []store.ResultBatch{batch("b1", 1, 3), batch("b2", 1, 1)} {
		wg.Go(func() {
			_, err := c.Submit(context.Background(), b)
			assert.NoError(t, err)
		})
		require.Eventually(t, func() bool { return metric(t, reg, "tend_ingest_queue_full_waits_total") == float64(i+1) }, 5*time.Second, time.Millisecond)
	}
	spy.releaseAllUntil(wg.Wait)
	require.Equal(t, []int{1, 1, 1, 1}, spy.callSizes(), "hold, a1, b1, b2: one commit each")
	spy.mu.Lock()
	defer spy.mu.Unlock()
	require.Equal(t, "b1", spy.calls[2][0].AgentID)
	require.Equal(t, "b2", spy.calls[3][0].AgentID)
}
