package stream

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"tend.dev/tend/agent/state"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

const (
	waitFor = 10 * time.Second
	tick    = 5 * time.Millisecond
)

type harness struct {
	c      *Client
	db     *state.DB
	cp     *fakeCP
	cancel context.CancelFunc
	done   chan error

	mu     sync.Mutex
	delays []time.Duration // backoff delays Run asked for
}

// start runs a Client against cp with fast test settings; cleanup stops it
// and checks that it stopped.
func start(t *testing.T, cp *fakeCP, mutate func(*Config), opts ...func(*harness)) *harness {
	t.Helper()
	db, err := state.Open(filepath.Join(t.TempDir(), "agent.db"), state.Options{})
	require.NoError(t, err)
	cfg := Config{
		Dial: cp.dial,
		DB:   db,
		Hello: func() *agentv1.Hello {
			return &agentv1.Hello{Version: "test", Labels: map[string]string{"role": "web"}}
		},
		Backoff:      BackoffConfig{Base: 5 * time.Millisecond, Max: 20 * time.Millisecond},
		PollInterval: 20 * time.Millisecond,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	h := &harness{db: db, cp: cp, done: make(chan error, 1)}
	h.c = New(cfg)
	for _, o := range opts {
		o(h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.c.Run(ctx) }()
	t.Cleanup(func() {
		h.stop(t)
		require.NoError(t, db.Close())
	})
	return h
}

// recordDelays makes Run's backoff waits instant and records them.
func recordDelays(h *harness) {
	h.c.wait = func(ctx context.Context, d time.Duration) bool {
		h.mu.Lock()
		h.delays = append(h.delays, d)
		h.mu.Unlock()
		return ctx.Err() == nil
	}
}

func (h *harness) stop(t *testing.T) {
	t.Helper()
	h.cancel()
	select {
	case err := <-h.done:
		require.NoError(t, err)
		h.done <- nil // stop is idempotent
	case <-time.After(waitFor):
		t.Fatal("Run did not return after cancel")
	}
}

func (h *harness) appendN(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		require.NoError(t, h.db.Append(&agentv1.CheckResult{
			CheckId: fmt.Sprintf("check-%d", i%3),
			Status:  agentv1.CheckStatus_CHECK_STATUS_OK,
			Output:  "ok",
		}))
	}
	h.c.Notify()
}

func (h *harness) pending() uint64 {
	p, _, _ := h.db.Stats()
	return p
}

func TestDeliversEveryResultAndClearsOutbox(t *testing.T) {
	cp := newFakeCP(t)
	h := start(t, cp, func(c *Config) { c.BatchMax = 7 })
	require.Eventually(t, h.c.Connected, waitFor, tick)

	h.appendN(t, 100)
	require.Eventually(t, func() bool { return cp.seenAll(100) }, waitFor, tick)
	require.Eventually(t, func() bool { return h.pending() == 0 }, waitFor, tick, "acked results leave the outbox")
	require.LessOrEqual(t, cp.get(func(f *fakeCP) int { return f.maxBatchLen }), 7)

	st := h.c.Stats()
	require.Equal(t, uint64(1), st.Connects)
	require.Equal(t, uint64(0), st.Reconnects)
	require.Equal(t, uint64(100), st.ResultsSent)
	require.Eventually(t, func() bool { return h.c.Stats().ResultsAcked == 100 }, waitFor, tick)
	require.GreaterOrEqual(t, st.BatchesSent, uint64(100/7))

	// Results appended without Notify go out on the poll timer.
	require.NoError(t, h.db.Append(&agentv1.CheckResult{CheckId: "quiet"}))
	require.Eventually(t, func() bool { return cp.seenAll(101) }, waitFor, tick)
	require.Zero(t, cp.duplicates())
}

func TestMaxInFlightAndResendAfterDrop(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.holdAcks = true })
	h := start(t, cp, func(c *Config) {
		c.BatchMax = 10
		c.MaxInFlight = 3
	})
	require.Eventually(t, h.c.Connected, waitFor, tick)
	h.appendN(t, 100)

	batches := func() int { return cp.get(func(f *fakeCP) int { return f.batches }) }
	require.Eventually(t, func() bool { return batches() == 3 }, waitFor, tick)
	require.Never(t, func() bool { return batches() > 3 }, 150*time.Millisecond, tick, "no more than MaxInFlight unacked batches")
	require.Equal(t, uint64(100), h.pending(), "nothing leaves the outbox unacked")

	// The connection drops with results received and not acked: they must
	// be sent again, and nothing may be skipped.
	unacked := cp.get(func(f *fakeCP) int { return len(f.seen) })
	require.Positive(t, unacked)
	cp.set(func(f *fakeCP) { f.holdAcks = false })
	cp.drop()
	require.Eventually(t, func() bool { return cp.seenAll(100) }, waitFor, tick)
	require.Eventually(t, func() bool { return h.pending() == 0 }, waitFor, tick)
	require.Equal(t, unacked, cp.duplicates(), "every unacked result was resent once")
	require.GreaterOrEqual(t, h.c.Stats().Reconnects, uint64(1))
}

func TestDelayedAcksThenRelease(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.holdAcks = true })
	h := start(t, cp, func(c *Config) {
		c.BatchMax = 5
		c.MaxInFlight = 2
	})
	require.Eventually(t, h.c.Connected, waitFor, tick)
	h.appendN(t, 40)
	require.Eventually(t, func() bool { return cp.get(func(f *fakeCP) int { return f.batches }) == 2 }, waitFor, tick)

	// From now on acks flow: the client continues on the same session.
	cp.releaseAcks()
	require.Eventually(t, func() bool { return cp.seenAll(40) && h.pending() == 0 }, waitFor, tick)
	require.Equal(t, uint64(0), h.c.Stats().Reconnects)
	require.Zero(t, cp.duplicates())
}

func TestAckTimeoutEndsSession(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.holdAcks = true })
	h := start(t, cp, func(c *Config) { c.AckTimeout = 50 * time.Millisecond })
	require.Eventually(t, h.c.Connected, waitFor, tick)
	h.appendN(t, 5)
	require.Eventually(t, func() bool { return h.c.Stats().Reconnects >= 1 }, waitFor, tick)
	cp.set(func(f *fakeCP) { f.holdAcks = false })
	require.Eventually(t, func() bool { return cp.seenAll(5) && h.pending() == 0 }, waitFor, tick)
}

func TestResultsAppendedWhileDisconnected(t *testing.T) {
	cp := newFakeCP(t)
	h := start(t, cp, nil)
	require.Eventually(t, h.c.Connected, waitFor, tick)
	h.appendN(t, 10)
	require.Eventually(t, func() bool { return cp.seenAll(10) && h.pending() == 0 }, waitFor, tick)

	cp.set(func(f *fakeCP) { f.refuse = true })
	cp.drop()
	require.Eventually(t, func() bool { return !h.c.Connected() }, waitFor, tick)
	attempts := cp.get(func(f *fakeCP) int { return f.attempts })
	h.appendN(t, 25)
	require.Eventually(t, func() bool { return cp.get(func(f *fakeCP) int { return f.attempts }) > attempts+2 }, waitFor, tick, "keeps retrying")
	require.Equal(t, uint64(25), h.pending())

	cp.set(func(f *fakeCP) { f.refuse = false })
	require.Eventually(t, func() bool { return cp.seenAll(35) && h.pending() == 0 }, waitFor, tick)
	hellos := cp.get(func(f *fakeCP) int { return len(f.hellos) })
	require.GreaterOrEqual(t, hellos, 2)
	last := cp.hellos[hellos-1]
	require.Equal(t, uint64(25), last.GetOutboxPending(), "Hello reports the outbox")
	require.Equal(t, "test", last.GetVersion())
}

func TestWelcomeAckClearsOutbox(t *testing.T) {
	// The control plane already has results 1..8 (an ack was lost).
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) {
		f.refuse = true
		f.ackedThrough = 8
	})
	h := start(t, cp, nil)
	h.appendN(t, 10)
	cp.set(func(f *fakeCP) { f.refuse = false })
	require.Eventually(t, func() bool { return h.pending() == 0 }, waitFor, tick)
	cp.mu.Lock()
	defer cp.mu.Unlock()
	require.Equal(t, map[uint64]int{9: 1, 10: 1}, cp.seen, "only the results the control plane lacked were sent")
}

func TestBackoffGrowsAndResets(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.refuse = true })
	backoff := BackoffConfig{Base: 10 * time.Millisecond, Multiplier: 2, Max: 80 * time.Millisecond, ResetAfter: time.Hour}
	h := start(t, cp, func(c *Config) { c.Backoff = backoff }, recordDelays)
	delays := func() []time.Duration {
		h.mu.Lock()
		defer h.mu.Unlock()
		return append([]time.Duration(nil), h.delays...)
	}
	require.Eventually(t, func() bool { return len(delays()) >= 8 }, waitFor, tick)
	cp.set(func(f *fakeCP) { f.refuse = false })
	require.Eventually(t, h.c.Connected, waitFor, tick)

	// The schedule is 10, 20, 40, 80, 80, ... ms, each ±20%.
	within := func(attempt int, d time.Duration) {
		t.Helper()
		s := float64(backoff.Schedule(attempt))
		require.GreaterOrEqual(t, float64(d), 0.8*s-1, "attempt %d: %s", attempt, d)
		require.LessOrEqual(t, float64(d), 1.2*s+1, "attempt %d: %s", attempt, d)
		require.LessOrEqual(t, d, time.Duration(1.2*float64(backoff.Max)), "capped")
	}
	got := delays()
	for i, d := range got {
		within(i, d)
	}
	require.Greater(t, got[3], got[0], "grows")

	// A drop right after connecting (up for less than ResetAfter) does not
	// reset the schedule.
	n := len(got)
	cp.drop()
	require.Eventually(t, func() bool { return len(delays()) > n }, waitFor, tick)
	within(n, delays()[n])
	require.Eventually(t, h.c.Connected, waitFor, tick)
}

func TestBackoffResetsAfterStableSession(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.refuse = true })
	backoff := BackoffConfig{Base: 10 * time.Millisecond, Multiplier: 2, Max: 80 * time.Millisecond, ResetAfter: time.Nanosecond}
	h := start(t, cp, func(c *Config) { c.Backoff = backoff }, recordDelays)
	require.Eventually(t, func() bool { return h.c.Stats().ConnectAttempts >= 6 }, waitFor, tick)
	cp.set(func(f *fakeCP) { f.refuse = false })
	require.Eventually(t, h.c.Connected, waitFor, tick)
	h.mu.Lock()
	n := len(h.delays)
	h.mu.Unlock()
	cp.drop()
	require.Eventually(t, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.delays) > n
	}, waitFor, tick)
	h.mu.Lock()
	d := h.delays[n]
	h.mu.Unlock()
	require.GreaterOrEqual(t, d, 8*time.Millisecond)
	require.LessOrEqual(t, d, 12*time.Millisecond, "a session that stayed up resets to the base delay")
}

func TestHeartbeatsFlow(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.hbInterval = 20 * time.Millisecond })
	h := start(t, cp, nil)
	require.Eventually(t, func() bool { return cp.get(func(f *fakeCP) int { return f.heartbeats }) >= 3 }, waitFor, tick)
	require.GreaterOrEqual(t, h.c.Stats().HeartbeatsSent, uint64(3))
}

func TestAssignmentsTasksAndWelcomeReachCallbacks(t *testing.T) {
	cp := newFakeCP(t)
	assignments := make(chan *agentv1.CheckAssignment, 4)
	tasks := make(chan *agentv1.TaskDelivery, 4)
	welcomes := make(chan *agentv1.Welcome, 4)
	h := start(t, cp, func(c *Config) {
		c.OnAssignment = func(a *agentv1.CheckAssignment) { assignments <- a }
		c.OnTask = func(td *agentv1.TaskDelivery) { tasks <- td }
		c.OnWelcome = func(w *agentv1.Welcome) { welcomes <- w }
	})
	require.Eventually(t, h.c.Connected, waitFor, tick)
	select {
	case w := <-welcomes:
		require.Equal(t, "agent-1", w.GetAgentId())
	case <-time.After(waitFor):
		t.Fatal("no OnWelcome")
	}

	want := &agentv1.CheckAssignment{Generation: 3, Checks: []*agentv1.CheckSpec{{
		Id:       "web-nginx-down",
		Interval: durationpb.New(5 * time.Second),
		Check:    &agentv1.CheckSpec_Tcp{Tcp: &agentv1.TcpCheck{Address: "127.0.0.1:80"}},
	}}}
	cp.send(t, &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Checks{Checks: want}})
	select {
	case got := <-assignments:
		require.True(t, proto.Equal(want, got), "got %v", got)
	case <-time.After(waitFor):
		t.Fatal("no OnAssignment")
	}

	cp.send(t, &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Task{Task: &agentv1.TaskDelivery{Envelope: []byte("signed")}}})
	select {
	case got := <-tasks:
		require.Equal(t, []byte("signed"), got.GetEnvelope())
	case <-time.After(waitFor):
		t.Fatal("no OnTask")
	}
	st := h.c.Stats()
	require.Equal(t, uint64(1), st.AssignmentsReceived)
	require.Equal(t, uint64(1), st.TasksReceived)
}

func TestWelcomeTimeout(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.noWelcome = true })
	h := start(t, cp, func(c *Config) { c.WelcomeTimeout = 30 * time.Millisecond })
	require.Eventually(t, func() bool { return cp.get(func(f *fakeCP) int { return len(f.hellos) }) >= 3 }, waitFor, tick)
	require.False(t, h.c.Connected())
	require.Zero(t, h.c.Stats().Connects)
	cp.set(func(f *fakeCP) { f.noWelcome = false })
	require.Eventually(t, h.c.Connected, waitFor, tick)
}

func TestRunStopsCleanlyWithoutLeaks(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.hbInterval = 10 * time.Millisecond })
	h := start(t, cp, nil)
	require.Eventually(t, h.c.Connected, waitFor, tick)
	h.appendN(t, 5)
	require.Eventually(t, func() bool { return h.pending() == 0 }, waitFor, tick)

	h.stop(t)
	require.False(t, h.c.Connected())
	require.Eventually(t, func() bool { return cp.get(func(f *fakeCP) int { return f.closedByPeer }) == 1 }, waitFor, tick, "the stream was half-closed, not cut")
	requireNoClientGoroutines(t)

	// Cancelled while disconnected and backing off.
	cp2 := newFakeCP(t)
	cp2.set(func(f *fakeCP) { f.refuse = true })
	h2 := start(t, cp2, func(c *Config) { c.Backoff = BackoffConfig{Base: time.Hour} })
	require.Eventually(t, func() bool { return cp2.get(func(f *fakeCP) int { return f.attempts }) >= 1 }, waitFor, tick)
	h2.stop(t)
	requireNoClientGoroutines(t)

	// Cancelled while waiting for Welcome.
	cp3 := newFakeCP(t)
	cp3.set(func(f *fakeCP) { f.noWelcome = true })
	h3 := start(t, cp3, nil)
	require.Eventually(t, func() bool { return cp3.get(func(f *fakeCP) int { return len(f.hellos) }) >= 1 }, waitFor, tick)
	h3.stop(t)
	requireNoClientGoroutines(t)
}

func TestRunRejectsIncompleteConfig(t *testing.T) {
	require.Error(t, New(Config{}).Run(context.Background()))
}

func TestWindowAck(t *testing.T) {
	w := &window{}
	w.add(sentBatch{id: 1, first: 1, last: 10, n: 10})
	w.add(sentBatch{id: 2, first: 11, last: 20, n: 10})
	w.add(sentBatch{id: 3, first: 21, last: 30, n: 10})

	// Batch 2 durable before batch 1: nothing can be cleared past 0 yet.
	clear, b, r := w.ack(2, 0)
	require.Equal(t, [3]uint64{0, 0, 0}, [3]uint64{clear, uint64(b), uint64(r)})
	require.Equal(t, 3, w.inFlight())

	clear, b, r = w.ack(1, 10)
	require.Equal(t, [3]uint64{20, 2, 20}, [3]uint64{clear, uint64(b), uint64(r)})
	require.Equal(t, 1, w.inFlight())

	// A cumulative ack covers batches by seq too.
	clear, b, r = w.ack(99, 30)
	require.Equal(t, [3]uint64{30, 1, 10}, [3]uint64{clear, uint64(b), uint64(r)})
	require.Zero(t, w.inFlight())
	_, _, ok := w.oldest()
	require.False(t, ok)
}

func TestCapBytes(t *testing.T) {
	rs := []*agentv1.CheckResult{
		{Seq: 1, Output: strings.Repeat("a", 100)},
		{Seq: 2, Output: strings.Repeat("b", 100)},
		{Seq: 3, Output: strings.Repeat("c", 100)},
	}
	require.Len(t, capBytes(rs, 250), 2)
	require.Len(t, capBytes(rs, 10), 1, "always at least one")
	require.Len(t, capBytes(rs, 1<<20), 3)
}

// requireNoClientGoroutines waits until no goroutine of a Client or of a
// gRPC client connection is left.
func requireNoClientGoroutines(t *testing.T) {
	t.Helper()
	markers := []string{"agent/stream.(*Client)", "transport.(*http2Client)", "grpc.(*ClientConn)", "grpc.(*addrConn)", "grpc.(*clientStream)"}
	var leaked string
	ok := func() bool {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			for _, m := range markers {
				if strings.Contains(g, m) {
					leaked = g
					return false
				}
			}
		}
		return true
	}
	if !assertEventually(ok) {
		t.Fatalf("goroutine left behind:\n%s", leaked)
	}
}

func assertEventually(cond func() bool) bool {
	deadline := time.Now().Add(waitFor)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(tick)
	}
	return cond()
}

func TestLingerGroupsResultsIntoOneBatch(t *testing.T) {
	cp := newFakeCP(t)
	const linger = 2 * time.Second // far longer than the appends take
	h := start(t, cp, func(c *Config) { c.BatchMax = 50; c.Linger = linger })
	require.Eventually(t, h.c.Connected, waitFor, tick)

	begin := time.Now()
	for range 5 {
		h.appendN(t, 1) // each append notifies the sender on its own
		time.Sleep(10 * time.Millisecond)
	}
	require.Eventually(t, func() bool { return cp.seenAll(5) }, waitFor, tick)
	elapsed := time.Since(begin)
	require.Equal(t, 1, cp.get(func(f *fakeCP) int { return f.batches }), "results within the linger share one batch")
	require.GreaterOrEqual(t, elapsed, linger, "the batch waited for the linger")
	require.Less(t, elapsed, linger+waitFor, "and not much longer")

	// A lone result waits at most the linger too.
	h.appendN(t, 1)
	require.Eventually(t, func() bool { return cp.seenAll(6) }, linger+waitFor, tick)
	require.Equal(t, 2, cp.get(func(f *fakeCP) int { return f.batches }))
}

func TestLingerNeverDelaysAFullBatch(t *testing.T) {
	cp := newFakeCP(t)
	h := start(t, cp, func(c *Config) { c.BatchMax = 5; c.Linger = time.Hour })
	require.Eventually(t, h.c.Connected, waitFor, tick)

	h.appendN(t, 12)
	require.Eventually(t, func() bool { return cp.seenAll(10) }, waitFor, tick, "two full batches go at once")
	require.Equal(t, 2, cp.get(func(f *fakeCP) int { return f.batches }), "the two left over wait")
}

func TestLingerSkipsResultsFromBeforeTheSession(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.refuse = true })
	h := start(t, cp, func(c *Config) { c.Linger = time.Hour })
	h.appendN(t, 3)
	cp.set(func(f *fakeCP) { f.refuse = false })
	require.Eventually(t, func() bool { return cp.seenAll(3) }, waitFor, tick, "a backlog is sent at once on connect")
}

// A heartbeat goes only when nothing else was sent for an interval: while
// results flow more often than that, none is sent; once they stop,
// heartbeats resume.
func TestHeartbeatSkippedWhileResultsFlow(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(func(f *fakeCP) { f.hbInterval = 400 * time.Millisecond })
	h := start(t, cp, func(c *Config) { c.Linger = 0 })
	require.Eventually(t, func() bool { return h.c.Stats().Connects >= 1 }, waitFor, tick)
	before := h.c.Stats().HeartbeatsSent
	// 60 results, one every 25 ms: 1.5 s, nearly four heartbeat intervals.
	for i := 0; i < 60; i++ {
		h.appendN(t, 1)
		time.Sleep(25 * time.Millisecond)
	}
	during := h.c.Stats().HeartbeatsSent - before
	// One may have been due before the first result went (the timer
	// started at Welcome); none after, unless the machine stalled for a
	// whole interval.
	require.LessOrEqual(t, during, uint64(1), "heartbeats sent while results flowed")
	require.Eventually(t, func() bool { return h.c.Stats().HeartbeatsSent >= before+during+2 }, waitFor, tick, "heartbeats resume when idle")
}
