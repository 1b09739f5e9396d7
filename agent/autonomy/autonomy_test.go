package autonomy

import (
	"context"
	"crypto/ed25519"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/agent/state"
	"tend.dev/tend/agent/tasks"
	"tend.dev/tend/internal/pki"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

type fixture struct {
	t       *testing.T
	key     *pki.SigningKey
	db      *state.DB
	a       *Autonomy
	offline atomic.Int64 // nanoseconds
	mu      sync.Mutex
	ran     []string
	result  tasks.LocalResult
	seq     uint64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	key, _, err := pki.LoadOrCreateSigningKey(filepath.Join(t.TempDir(), "k"))
	require.NoError(t, err)
	db, err := state.Open(filepath.Join(t.TempDir(), "agent.db"), state.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	f := &fixture{t: t, key: key, db: db, result: tasks.LocalResult{State: agentv1.TaskState_TASK_STATE_SUCCEEDED, Output: "restarted"}}
	f.a = f.open()
	return f
}

func (f *fixture) open() *Autonomy {
	a, err := New(Config{
		DB: f.db, AgentID: "agent-1",
		Keys: func() map[string]ed25519.PublicKey { return map[string]ed25519.PublicKey{f.key.ID: f.key.Pub} },
		Run: func(_ context.Context, runID string, o *taskv1.StandingOrder) tasks.LocalResult {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.ran = append(f.ran, o.GetAction())
			return f.result
		},
		Offline: func() time.Duration { return time.Duration(f.offline.Load()) },
	})
	require.NoError(f.t, err)
	f.t.Cleanup(a.Stop)
	return a
}

func (f *fixture) order(mod func(*taskv1.StandingOrder)) []byte {
	f.t.Helper()
	now := time.Now()
	params, _ := structpb.NewStruct(map[string]any{"argv": []any{"/bin/true"}})
	o := &taskv1.StandingOrder{
		OrderId: "ord-1", AgentId: "agent-1", Policy: "web", PolicyVersion: 1, CheckId: "web",
		Failures: 2, Window: 3, Action: "exec.run", Params: params, Timeout: durationpb.New(5 * time.Second),
		OfflineAfter: durationpb.New(30 * time.Second), MaxPerHour: 1, VerifyWithin: durationpb.New(time.Minute),
		Backoff: durationpb.New(0), NotBefore: timestamppb.New(now.Add(-time.Minute)), ExpiresAt: timestamppb.New(now.Add(time.Hour)),
	}
	if mod != nil {
		mod(o)
	}
	env, err := task.SealStandingOrder(f.key, o)
	require.NoError(f.t, err)
	return env
}

func (f *fixture) result1(st agentv1.CheckStatus) {
	f.seq++
	f.a.Observe(&agentv1.CheckResult{Seq: f.seq, CheckId: "web", Status: st, StartedAt: timestamppb.Now()})
}

func (f *fixture) runs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.ran)
}

const (
	crit = agentv1.CheckStatus_CHECK_STATUS_CRITICAL
	ok   = agentv1.CheckStatus_CHECK_STATUS_OK
)

func TestConnectedAgentOnlyWatches(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, f.a.SetOrders(&agentv1.StandingOrders{Envelopes: [][]byte{f.order(nil)}}))
	for range 5 {
		f.result1(crit)
	}
	time.Sleep(50 * time.Millisecond)
	require.Zero(t, f.runs(), "the control plane decides while it is reachable")
	f.offline.Store(int64(10 * time.Second))
	f.result1(crit)
	time.Sleep(50 * time.Millisecond)
	require.Zero(t, f.runs(), "not before offline_after")
}

func TestOfflineRunVerifiedAndReported(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, f.a.SetOrders(&agentv1.StandingOrders{Envelopes: [][]byte{f.order(nil)}}))
	f.offline.Store(int64(time.Minute))
	f.result1(crit)
	f.result1(crit)
	require.Eventually(t, func() bool { return f.runs() == 1 }, 5*time.Second, 10*time.Millisecond)
	// Wait until the action's end is recorded, then the check passes.
	require.Eventually(t, func() bool {
		f.a.mu.Lock()
		defer f.a.mu.Unlock()
		o := f.a.byCheck["web"][0]
		return o.run != nil && !o.run.finished.IsZero()
	}, 5*time.Second, 10*time.Millisecond)
	reps, err := f.a.Reports()
	require.NoError(t, err)
	require.Empty(t, reps, "not reported while verifying")
	time.Sleep(5 * time.Millisecond)
	f.result1(ok)
	reps, err = f.a.Reports()
	require.NoError(t, err)
	require.Len(t, reps, 1)
	r := reps[0]
	require.True(t, r.GetVerified())
	require.Equal(t, agentv1.TaskState_TASK_STATE_SUCCEEDED, r.GetState())
	var kinds []string
	for _, e := range r.GetEvents() {
		kinds = append(kinds, e.GetKind())
	}
	require.Equal(t, []string{"detected", "decided", "started", "finished", "verifying", "verified"}, kinds)

	// The budget (1 an hour) is spent: a new failure does nothing, even
	// after a restart of the agent.
	f.a.Stop()
	f.a = f.open()
	for range 4 {
		f.result1(crit)
	}
	time.Sleep(50 * time.Millisecond)
	require.Equal(t, 1, f.runs(), "max_per_hour holds across restarts")

	require.NoError(t, f.a.Acked(r.GetRunId()))
	reps, err = f.a.Reports()
	require.NoError(t, err)
	require.Empty(t, reps)
}

func TestNothingUnsignedOrExpiredRuns(t *testing.T) {
	f := newFixture(t)
	other, _, err := pki.LoadOrCreateSigningKey(filepath.Join(t.TempDir(), "other"))
	require.NoError(t, err)
	// The same order, signed by a key the agent does not hold.
	var o *taskv1.StandingOrder
	f.order(func(x *taskv1.StandingOrder) { o = x })
	forged, err := task.SealStandingOrder(other, o)
	require.NoError(t, err)
	expired := f.order(func(x *taskv1.StandingOrder) {
		x.NotBefore = timestamppb.New(time.Now().Add(-2 * time.Hour))
		x.ExpiresAt = timestamppb.New(time.Now().Add(-time.Hour))
	})
	forOther := f.order(func(x *taskv1.StandingOrder) { x.AgentId = "agent-2" })
	// The agent does not evaluate `when`: an order carrying one (policy
	// validation refuses such a policy) would run on a broader trigger.
	withWhen := f.order(func(x *taskv1.StandingOrder) { x.When = `result.status != "ok"` })
	require.NoError(t, f.a.SetOrders(&agentv1.StandingOrders{Envelopes: [][]byte{forged, expired, forOther, withWhen}}))
	require.Zero(t, f.a.Orders(), "every one refused")
	f.offline.Store(int64(time.Hour))
	for range 5 {
		f.result1(crit)
	}
	time.Sleep(50 * time.Millisecond)
	require.Zero(t, f.runs())
}

func TestRefusedActionIsReportedNotRetriedAtOnce(t *testing.T) {
	f := newFixture(t)
	f.result = tasks.LocalResult{State: agentv1.TaskState_TASK_STATE_REJECTED, Reason: "exec.run argv [/bin/true] is not an allowed command"}
	require.NoError(t, f.a.SetOrders(&agentv1.StandingOrders{Envelopes: [][]byte{f.order(func(o *taskv1.StandingOrder) { o.MaxPerHour = 5 })}}))
	f.offline.Store(int64(time.Minute))
	f.result1(crit)
	f.result1(crit)
	require.Eventually(t, func() bool {
		reps, _ := f.a.Reports()
		return len(reps) == 1
	}, 5*time.Second, 10*time.Millisecond)
	reps, _ := f.a.Reports()
	require.Equal(t, agentv1.TaskState_TASK_STATE_REJECTED, reps[0].GetState())
	require.Contains(t, reps[0].GetReason(), "not an allowed command")
}

// A failure streak that began while the control plane was reachable is the
// control plane's: offline, the agent waits for a streak of its own.
func TestOnlyAnOfflineFailureStreakCounts(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, f.a.SetOrders(&agentv1.StandingOrders{Envelopes: [][]byte{f.order(func(o *taskv1.StandingOrder) { o.MaxPerHour = 5 })}}))
	for range 3 {
		f.result1(crit) // triggered while connected
	}
	f.offline.Store(int64(time.Minute))
	f.result1(crit)
	time.Sleep(50 * time.Millisecond)
	require.Zero(t, f.runs(), "one failure alone is not a trigger")
	f.result1(crit)
	require.Eventually(t, func() bool { return f.runs() == 1 }, 5*time.Second, 10*time.Millisecond)
}

// Never while the control plane's own task runs, and never twice for a
// failure the action does not fix (maxAttempts).
func TestNotWhileBusyAndAtMostMaxAttempts(t *testing.T) {
	f := newFixture(t)
	var busy atomic.Bool
	f.a.cfg.Busy = busy.Load
	f.result = tasks.LocalResult{State: agentv1.TaskState_TASK_STATE_FAILED, Reason: "exit 1"}
	require.NoError(t, f.a.SetOrders(&agentv1.StandingOrders{Envelopes: [][]byte{f.order(func(o *taskv1.StandingOrder) {
		o.MaxPerHour, o.MaxAttempts = 10, 2
	})}}))
	f.offline.Store(int64(time.Minute))
	busy.Store(true)
	for range 3 {
		f.result1(crit)
	}
	time.Sleep(50 * time.Millisecond)
	require.Zero(t, f.runs(), "a control-plane task is running")
	busy.Store(false)
	for range 10 {
		f.result1(crit)
		time.Sleep(20 * time.Millisecond)
	}
	require.Eventually(t, func() bool { return f.runs() == 2 }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, 2, f.runs(), "maxAttempts 2: then it is a person's")
}
