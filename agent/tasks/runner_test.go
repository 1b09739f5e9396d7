package tasks

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/agent/config"
	"tend.dev/tend/agent/state"
	"tend.dev/tend/internal/pki"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

const (
	waitFor = 10 * time.Second
	tick    = 2 * time.Millisecond

	agentID = "agent-1"
)

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

const (
	stRunning   = agentv1.TaskState_TASK_STATE_RUNNING
	stSucceeded = agentv1.TaskState_TASK_STATE_SUCCEEDED
	stFailed    = agentv1.TaskState_TASK_STATE_FAILED
	stRejected  = agentv1.TaskState_TASK_STATE_REJECTED
)

// fakeExec counts executions. Execute blocks while block is non-nil and not
// closed, and honours ctx.
type fakeExec struct {
	mu          sync.Mutex
	calls       []execCall
	validated   int
	validateErr error
	resp        *pluginv1.ExecuteResponse
	err         error
	block       chan struct{}
	started     chan string
	// validateBlock, if set, holds Validate until it is closed or its
	// context ends; validating is told when Validate starts.
	validateBlock chan struct{}
	validating    chan struct{}
}

type execCall struct {
	action  string
	params  *structpb.Struct
	taskID  string
	timeout time.Duration
}

func newFakeExec() *fakeExec {
	return &fakeExec{
		resp:       &pluginv1.ExecuteResponse{Success: true, Output: "restarted nginx (pid 4242)", Metrics: map[string]float64{"pid": 4242}},
		started:    make(chan string, 64),
		validating: make(chan struct{}, 64),
	}
}

func (f *fakeExec) Validate(ctx context.Context, action string, params *structpb.Struct) error {
	f.mu.Lock()
	f.validated++
	block, err := f.validateBlock, f.validateErr
	f.mu.Unlock()
	f.validating <- struct{}{}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

func (f *fakeExec) Execute(ctx context.Context, action string, params *structpb.Struct, taskID string, timeout time.Duration) (*pluginv1.ExecuteResponse, error) {
	f.mu.Lock()
	f.calls = append(f.calls, execCall{action, params, taskID, timeout})
	block, resp, err := f.block, f.resp, f.err
	f.mu.Unlock()
	f.started <- taskID
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, fmt.Errorf("plugin killed: %w", ctx.Err())
		}
	}
	return resp, err
}

func (f *fakeExec) executions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *fakeExec) set(fn func(*fakeExec)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

type harness struct {
	r       *Runner
	db      *state.DB
	exec    *fakeExec
	key     *pki.SigningKey
	cfg     Config
	notices chan struct{}
}

func newKey(t testing.TB) *pki.SigningKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return &pki.SigningKey{ID: pki.KeyID(pub), Priv: priv, Pub: pub}
}

func testAllow(t testing.TB, cleanDir string) AllowList {
	t.Helper()
	a, err := NewAllowList(map[string]config.ActionRule{
		"process.restart": {Commands: [][]string{{"/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"}}, Pidfiles: []string{"/run/nginx.pid"}},
		"process.kill":    {Signals: []string{"TERM"}},
		"exec.run":        {Commands: [][]string{{"/usr/local/bin/rotate-logs", "--now"}}},
		"disk.cleanup":    {Paths: []string{cleanDir}},
		"service.restart": {Units: []string{"nginx.service"}},
	})
	require.NoError(t, err)
	return a
}

// startRunner starts a Runner on a fresh (or the given) DB with a fixed
// clock at t0, a fake executor and a pinned key; cleanup stops it.
func startRunner(t *testing.T, mutate func(*harness)) *harness {
	t.Helper()
	h := &harness{exec: newFakeExec(), key: newKey(t), notices: make(chan struct{}, 1024)}
	db, err := state.Open(filepath.Join(t.TempDir(), "agent.db"), state.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	h.db = db
	h.cfg = Config{
		DB:      db,
		AgentID: agentID,
		Keys:    func() map[string]ed25519.PublicKey { return map[string]ed25519.PublicKey{h.key.ID: h.key.Pub} },
		Allow:   testAllow(t, t.TempDir()),
		Now:     func() time.Time { return t0 },
		Notify:  func() { h.notices <- struct{}{} },
	}
	if mutate != nil {
		mutate(h)
	}
	h.cfg.Exec = h.exec
	h.r = New(h.cfg)
	h.r.Start()
	t.Cleanup(h.r.Stop)
	return h
}

func params(t testing.TB, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	require.NoError(t, err)
	return s
}

func nginxTask(t testing.TB, seq uint64) *taskv1.Task {
	return &taskv1.Task{
		TaskId:     fmt.Sprintf("task-%d", seq),
		AgentId:    agentID,
		IncidentId: "inc-1",
		Policy:     "web-nginx-down",
		Action:     "process.restart",
		Params: params(t, map[string]any{
			"match":   map[string]any{"pidfile": "/run/nginx.pid"},
			"command": []any{"/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"},
		}),
		Seq:       seq,
		NotBefore: timestamppb.New(t0.Add(-time.Minute)),
		ExpiresAt: timestamppb.New(t0.Add(5 * time.Minute)),
		Timeout:   durationpb.New(30 * time.Second),
		Attempt:   1,
	}
}

func (h *harness) seal(t testing.TB, tk *taskv1.Task) []byte {
	t.Helper()
	env, err := task.Seal(h.key, tk)
	require.NoError(t, err)
	return env
}

func (h *harness) deliver(env []byte) {
	h.r.Deliver(&agentv1.TaskDelivery{Envelope: env})
}

// waitUpdates waits until the outbox holds exactly n updates and returns
// them.
func (h *harness) waitUpdates(t *testing.T, n int) []*agentv1.TaskUpdate {
	t.Helper()
	var us []*agentv1.TaskUpdate
	require.Eventually(t, func() bool {
		var err error
		us, err = h.db.PendingTaskUpdates()
		require.NoError(t, err)
		return len(us) >= n
	}, waitFor, tick)
	require.Never(t, func() bool {
		got, _ := h.db.PendingTaskUpdates()
		return len(got) > n
	}, 30*time.Millisecond, tick, "more updates than expected")
	return us
}

func states(us []*agentv1.TaskUpdate) []agentv1.TaskState {
	out := make([]agentv1.TaskState, len(us))
	for i, u := range us {
		out[i] = u.GetState()
	}
	return out
}

func TestValidTaskRunsOnceAndReports(t *testing.T) {
	h := startRunner(t, nil)
	tk := nginxTask(t, 1)
	h.deliver(h.seal(t, tk))

	us := h.waitUpdates(t, 2)
	require.Equal(t, []agentv1.TaskState{stRunning, stSucceeded}, states(us))
	for _, u := range us {
		require.Equal(t, "task-1", u.GetTaskId())
		require.Equal(t, uint64(1), u.GetSeq())
		require.True(t, u.GetAt().AsTime().Equal(t0))
	}
	require.Equal(t, "restarted nginx (pid 4242)", us[1].GetOutput())
	require.Equal(t, map[string]float64{"pid": 4242}, us[1].GetMetrics())
	require.Empty(t, us[1].GetReason())

	require.Equal(t, 1, h.exec.executions())
	c := h.exec.calls[0]
	require.Equal(t, "process.restart", c.action)
	require.Equal(t, "task-1", c.taskID)
	require.Equal(t, 30*time.Second, c.timeout, "the task's timeout reaches the executor")
	require.True(t, proto.Equal(tk.GetParams(), c.params))
	require.Equal(t, uint64(1), h.db.TaskHighWater())
	require.Len(t, h.notices, 2, "the stream is woken for every update")
	require.Equal(t, Stats{Received: 1, Executed: 1, Succeeded: 1}, h.r.Stats())
}

func TestSameEnvelopeAgainIsReplay(t *testing.T) {
	h := startRunner(t, nil)
	env := h.seal(t, nginxTask(t, 7))
	h.deliver(env)
	h.waitUpdates(t, 2)
	h.deliver(env)
	us := h.waitUpdates(t, 3)
	require.Equal(t, stRejected, us[2].GetState())
	require.Equal(t, "task-7", us[2].GetTaskId())
	require.Equal(t, "replay: seq 7 ≤ high-water mark 7", us[2].GetReason())
	require.Equal(t, 1, h.exec.executions(), "executed 0 times beyond the first")

	// An older task is a replay too.
	h.deliver(h.seal(t, nginxTask(t, 3)))
	us = h.waitUpdates(t, 4)
	require.Equal(t, "replay: seq 3 ≤ high-water mark 7", us[3].GetReason())
	require.Equal(t, 1, h.exec.executions())
}

func TestReplayAfterCrashAndRestart(t *testing.T) {
	h := startRunner(t, nil)
	env := h.seal(t, nginxTask(t, 4))
	h.deliver(env)
	h.waitUpdates(t, 2)

	// "Crash": stop, close the database, reopen it, new runner and
	// executor.
	h.r.Stop()
	path := h.db.Path()
	require.NoError(t, h.db.Close())
	db, err := state.Open(path, state.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	exec2 := newFakeExec()
	cfg := h.cfg
	cfg.DB, cfg.Exec = db, exec2
	r2 := New(cfg)
	r2.Start()
	t.Cleanup(r2.Stop)

	r2.Deliver(&agentv1.TaskDelivery{Envelope: env})
	require.Eventually(t, func() bool {
		us, _ := db.PendingTaskUpdates()
		return len(us) == 3 && us[2].GetState() == stRejected
	}, waitFor, tick)
	us, _ := db.PendingTaskUpdates()
	require.Equal(t, "replay: seq 4 ≤ high-water mark 4", us[2].GetReason())
	require.Zero(t, exec2.executions())
}

func TestCrashWhileRunningIsReportedNotRerun(t *testing.T) {
	// The agent died in the middle of task 5: RUNNING is in the outbox,
	// the seq is used up.
	h := startRunner(t, func(h *harness) {
		require.NoError(t, h.db.AcceptTask("task-5", 5))
		require.NoError(t, h.db.PutTaskUpdate(&agentv1.TaskUpdate{TaskId: "task-5", Seq: 5, State: stRunning, At: timestamppb.New(t0.Add(-time.Minute))}))
	})
	us := h.waitUpdates(t, 2)
	require.Equal(t, []agentv1.TaskState{stRunning, stFailed}, states(us))
	require.Equal(t, "task-5", us[1].GetTaskId())
	require.Contains(t, us[1].GetReason(), "interrupted: tend-agent stopped while the task was running (started 2025-06-01T11:59:00Z); it is not run again")
	it, err := h.db.InterruptedTask()
	require.NoError(t, err)
	require.Nil(t, it, "reported once")

	h.deliver(h.seal(t, nginxTask(t, 5)))
	us = h.waitUpdates(t, 3)
	require.Equal(t, stRejected, us[2].GetState())
	require.Zero(t, h.exec.executions())
}

func TestCrashAfterAcceptIsReportedNotRun(t *testing.T) {
	// The agent died right after using up task 5's seq: nothing was run
	// or reported. The next start reports it failed, so the control plane
	// can retry at once rather than wait for the task's expiry.
	h := startRunner(t, func(h *harness) {
		require.NoError(t, h.db.AcceptTask("task-5", 5))
	})
	us := h.waitUpdates(t, 1)
	require.Equal(t, []agentv1.TaskState{stFailed}, states(us))
	require.Equal(t, "task-5", us[0].GetTaskId())
	require.Equal(t, uint64(5), us[0].GetSeq())
	require.Equal(t, "interrupted: tend-agent stopped after accepting the task and before starting it; it is not run", us[0].GetReason())
	it, err := h.db.InterruptedTask()
	require.NoError(t, err)
	require.Nil(t, it, "reported once")

	h.deliver(h.seal(t, nginxTask(t, 5)))
	us = h.waitUpdates(t, 2)
	require.Equal(t, stRejected, us[1].GetState())
	require.Zero(t, h.exec.executions())
}

// Each forgery or refusal is REJECTED (a task too late: EXPIRED) with its
// own reason, and nothing is executed.
func TestRejections(t *testing.T) {
	other := newKey(t)
	tests := []struct {
		name string
		// env builds the envelope from the harness.
		env      func(t *testing.T, h *harness) []byte
		setup    func(h *harness)
		reason   string
		taskID   string
		consumes bool // the seq is used up (high-water mark moves)
		// state reported (default REJECTED): a task that came too late is
		// EXPIRED, which the control plane may retry.
		state agentv1.TaskState
	}{
		{
			name: "flipped byte",
			env: func(t *testing.T, h *harness) []byte {
				b := h.seal(t, nginxTask(t, 1))
				b[len(b)-10] ^= 0x20 // in the signature
				return b
			},
			reason: "signature does not verify", taskID: "task-1",
		},
		{
			name: "flipped byte in the payload",
			env: func(t *testing.T, h *harness) []byte {
				b := h.seal(t, nginxTask(t, 1))
				i := strings.Index(string(b), "/etc/nginx/nginx.conf")
				b[i+1] = 'x' // "/xtc/nginx/nginx.conf"
				return b
			},
			reason: "signature does not verify", taskID: "task-1",
		},
		{
			name: "unknown key",
			env: func(t *testing.T, h *harness) []byte {
				env, err := task.Seal(other, nginxTask(t, 1))
				require.NoError(t, err)
				return env
			},
			reason: "signed by unknown key", taskID: "task-1",
		},
		{
			name: "wrong payload type",
			env: func(t *testing.T, h *harness) []byte {
				payload, _ := proto.Marshal(nginxTask(t, 1))
				env, err := task.SealPayload(h.key, "tend.task.v1.StandingOrder", payload)
				require.NoError(t, err)
				return env
			},
			reason: `payload type is "tend.task.v1.StandingOrder", want "tend.task.v1.Task"`,
		},
		{
			name:   "not an envelope",
			env:    func(t *testing.T, h *harness) []byte { return []byte("rm -rf /") },
			reason: "malformed envelope",
		},
		{
			name: "wrong addressee",
			env: func(t *testing.T, h *harness) []byte {
				tk := nginxTask(t, 1)
				tk.AgentId = "agent-2"
				return h.seal(t, tk)
			},
			reason: "task for agent agent-2, this is agent agent-1", taskID: "task-1",
		},
		{
			name: "expired",
			env: func(t *testing.T, h *harness) []byte {
				tk := nginxTask(t, 1)
				tk.NotBefore = timestamppb.New(t0.Add(-time.Hour))
				tk.ExpiresAt = timestamppb.New(t0.Add(-10 * time.Minute))
				return h.seal(t, tk)
			},
			reason: "expired at 2025-06-01T11:50:00Z", taskID: "task-1", state: agentv1.TaskState_TASK_STATE_EXPIRED,
		},
		{
			name: "not yet valid",
			env: func(t *testing.T, h *harness) []byte {
				tk := nginxTask(t, 1)
				tk.NotBefore = timestamppb.New(t0.Add(10 * time.Minute))
				tk.ExpiresAt = timestamppb.New(t0.Add(20 * time.Minute))
				return h.seal(t, tk)
			},
			reason: "not valid before 2025-06-01T12:10:00Z", taskID: "task-1",
		},
		{
			name: "action not in the allow-list",
			env: func(t *testing.T, h *harness) []byte {
				tk := nginxTask(t, 1)
				tk.Action = "exec.run"
				tk.Params = params(t, map[string]any{"argv": []any{"/bin/sh", "-c", "id"}})
				return h.seal(t, tk)
			},
			setup: func(h *harness) {
				a, err := NewAllowList(map[string]config.ActionRule{"process.restart": {Commands: [][]string{{"/usr/sbin/nginx"}}}})
				if err != nil {
					panic(err)
				}
				h.cfg.Allow = a
			},
			reason: "action exec.run not in the agent's allow-list", taskID: "task-1", consumes: true,
		},
		{
			name: "params outside the allow-list",
			env: func(t *testing.T, h *harness) []byte {
				tk := nginxTask(t, 1)
				tk.Action = "disk.cleanup"
				tk.Params = params(t, map[string]any{"path": "/etc", "pattern": "*"})
				return h.seal(t, tk)
			},
			reason: "disk.cleanup path /etc not under an allowed path", taskID: "task-1", consumes: true,
		},
		{
			name: "argv outside the allow-list",
			env: func(t *testing.T, h *harness) []byte {
				tk := nginxTask(t, 1)
				tk.Params = params(t, map[string]any{"command": []any{"/usr/sbin/nginx", "-c", "/tmp/evil.conf"}})
				return h.seal(t, tk)
			},
			reason: `process.restart command ["/usr/sbin/nginx" "-c" "/tmp/evil.conf"] is not an allowed command`, taskID: "task-1", consumes: true,
		},
		{
			name:   "plugin refuses the parameters",
			env:    func(t *testing.T, h *harness) []byte { return h.seal(t, nginxTask(t, 1)) },
			setup:  func(h *harness) { h.exec.validateErr = errors.New("match: pidfile /run/nginx.pid does not exist") },
			reason: "invalid parameters for process.restart: match: pidfile /run/nginx.pid does not exist", taskID: "task-1", consumes: true,
		},
		{
			name: "no key pinned",
			env:  func(t *testing.T, h *harness) []byte { return h.seal(t, nginxTask(t, 1)) },
			setup: func(h *harness) {
				h.cfg.Keys = func() map[string]ed25519.PublicKey { return nil }
			},
			reason: "signed by unknown key", taskID: "task-1",
		},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := startRunner(t, tc.setup)
			h.deliver(tc.env(t, h))
			us := h.waitUpdates(t, 1)
			u := us[0]
			want := stRejected
			if tc.state != agentv1.TaskState_TASK_STATE_UNSPECIFIED {
				want = tc.state
			}
			require.Equal(t, want, u.GetState())
			require.Contains(t, u.GetReason(), tc.reason)
			require.Equal(t, tc.taskID, u.GetTaskId())
			require.Zero(t, h.exec.executions(), "executed 0 times")
			if tc.consumes {
				require.Equal(t, uint64(1), h.db.TaskHighWater(), "a genuine task's seq is used up even when refused")
			} else {
				require.Zero(t, h.db.TaskHighWater(), "an untrusted task moves nothing")
			}
			require.False(t, seen[u.GetReason()], "each refusal has its own reason")
			seen[u.GetReason()] = true
			require.Equal(t, uint64(1), h.r.Stats().Rejected)
		})
	}
}

func TestGenuineTaskRefusedByAllowListCannotBeRetried(t *testing.T) {
	h := startRunner(t, nil)
	tk := nginxTask(t, 1)
	tk.Action = "exec.run"
	tk.Params = params(t, map[string]any{"argv": []any{"/usr/local/bin/rotate-logs", "--now", "--all"}})
	env := h.seal(t, tk)
	h.deliver(env)
	h.deliver(env)
	us := h.waitUpdates(t, 2)
	require.Contains(t, us[0].GetReason(), "not an allowed command")
	require.Equal(t, "replay: seq 1 ≤ high-water mark 1", us[1].GetReason())
	require.Zero(t, h.exec.executions())
}

func TestInjectionCorpusNeverExecutes(t *testing.T) {
	h := startRunner(t, nil)
	corpus := [][]any{
		{"/usr/local/bin/rotate-logs", "--now;id"},
		{"/usr/local/bin/rotate-logs", "--now", ";", "id"},
		{"/usr/local/bin/rotate-logs", "--now\nid"},
		{"/usr/local/bin/rotate-logs", "--now\x00"},
		{"/usr/local/bin/rotate-logs", "$(id)"},
		{"/usr/local/bin/rotate-logs", "`id`"},
		{"/usr/local/bin/rotate-logs", "--now", "-o", "/etc/passwd"},
		{"/usr/local/bin/rotate-logs --now"},
		{"/bin/sh", "-c", "/usr/local/bin/rotate-logs --now"},
		{"/usr/local/bin/rotate-logs"},
	}
	for i, argv := range corpus {
		tk := nginxTask(t, uint64(i+1))
		tk.Action = "exec.run"
		tk.Params = params(t, map[string]any{"argv": argv})
		h.deliver(h.seal(t, tk))
	}
	us := h.waitUpdates(t, len(corpus))
	for i, u := range us {
		require.Equal(t, stRejected, u.GetState(), "argv %q", corpus[i])
		require.NotContains(t, u.GetReason(), "\n", "hostile values are quoted in reasons")
	}
	require.Zero(t, h.exec.executions(), "no canary ever runs")
}

func TestExecutorErrorAndFailure(t *testing.T) {
	h := startRunner(t, nil)
	h.exec.set(func(f *fakeExec) { f.err = errors.New("plugin process crashed: exit status 2") })
	h.deliver(h.seal(t, nginxTask(t, 1)))
	us := h.waitUpdates(t, 2)
	require.Equal(t, []agentv1.TaskState{stRunning, stFailed}, states(us))
	require.Equal(t, "process.restart failed: plugin process crashed: exit status 2", us[1].GetReason())

	h.exec.set(func(f *fakeExec) {
		f.err = nil
		f.resp = &pluginv1.ExecuteResponse{Success: false, Output: "nginx: [emerg] bind() failed"}
	})
	h.deliver(h.seal(t, nginxTask(t, 2)))
	us = h.waitUpdates(t, 4)
	require.Equal(t, stFailed, us[3].GetState())
	require.Equal(t, "process.restart reported failure", us[3].GetReason())
	require.Equal(t, "nginx: [emerg] bind() failed", us[3].GetOutput())
	st := h.r.Stats()
	require.Equal(t, uint64(2), st.Failed)
	require.Equal(t, uint64(2), st.Executed)
}

func TestExecutorThatOverrunsIsCutOff(t *testing.T) {
	h := startRunner(t, func(h *harness) { h.cfg.ExecGrace = 20 * time.Millisecond })
	h.exec.set(func(f *fakeExec) { f.block = make(chan struct{}) }) // never returns by itself
	tk := nginxTask(t, 1)
	tk.Timeout = durationpb.New(30 * time.Millisecond)
	h.deliver(h.seal(t, tk))
	us := h.waitUpdates(t, 2)
	require.Equal(t, stFailed, us[1].GetState())
	require.Contains(t, us[1].GetReason(), "process.restart timed out after 30ms")
	require.Equal(t, 30*time.Millisecond, h.exec.calls[0].timeout)
}

// A delivery that finds the queue full is not accepted (its seq is not
// used up) and not reported: a terminal report of a task that can still
// run could be contradicted by its resend. The control plane sends it again
// on the next connect.
func TestQueueFullDropsUnreported(t *testing.T) {
	h := startRunner(t, func(h *harness) { h.cfg.QueueSize = 1 })
	block := make(chan struct{})
	h.exec.set(func(f *fakeExec) { f.block = block })
	h.deliver(h.seal(t, nginxTask(t, 1)))
	<-h.exec.started                      // task 1 runs
	h.deliver(h.seal(t, nginxTask(t, 2))) // queued
	task3 := h.seal(t, nginxTask(t, 3))
	h.deliver(task3) // no room
	require.Eventually(t, func() bool { return h.r.Stats().NotTaken == 1 }, waitFor, tick)
	close(block)
	us := h.waitUpdates(t, 4)
	var got []string
	for _, u := range us {
		got = append(got, u.GetTaskId()+"/"+u.GetState().String())
	}
	require.Equal(t, []string{
		"task-1/TASK_STATE_RUNNING", "task-1/TASK_STATE_SUCCEEDED",
		"task-2/TASK_STATE_RUNNING", "task-2/TASK_STATE_SUCCEEDED",
	}, got, "tasks run one at a time, in order; task 3 is not reported")
	require.Equal(t, uint64(2), h.db.TaskHighWater(), "a task not taken uses up no seq")

	h.deliver(task3) // sent again (on a reconnect): it runs
	us = h.waitUpdates(t, 6)
	require.Equal(t, "task-3", us[5].GetTaskId())
	require.Equal(t, stSucceeded, us[5].GetState())
	require.Equal(t, 3, h.exec.executions())
}

// Stop: the running task is reported interrupted (FAILED: the control plane
// may retry), a queued one and a later delivery are dropped unreported
// (not accepted: they run when sent again after the restart).
func TestStopInterruptsRunningTaskAndDropsQueued(t *testing.T) {
	h := startRunner(t, nil)
	h.exec.set(func(f *fakeExec) { f.block = make(chan struct{}) })
	h.deliver(h.seal(t, nginxTask(t, 1)))
	<-h.exec.started
	h.deliver(h.seal(t, nginxTask(t, 2)))
	h.r.Stop()
	us, err := h.db.PendingTaskUpdates()
	require.NoError(t, err)
	require.Equal(t, []agentv1.TaskState{stRunning, stFailed}, states(us))
	require.Contains(t, us[1].GetReason(), "interrupted: tend-agent is stopping")

	h.deliver(h.seal(t, nginxTask(t, 3)))
	us, err = h.db.PendingTaskUpdates()
	require.NoError(t, err)
	require.Len(t, us, 2, "a delivery after Stop is dropped at once")
	require.Equal(t, uint64(2), h.r.Stats().NotTaken)
	require.Equal(t, uint64(1), h.db.TaskHighWater(), "only task 1 was accepted")
	require.Equal(t, 1, h.exec.executions())
	h.r.Stop() // idempotent
}

// A task accepted and not started when the agent stops (here: stopped while
// the plugin validates its parameters) is reported FAILED, not REJECTED:
// nothing is wrong with it, and its seq is used up, so it never runs.
func TestStopBeforeStartReportsFailed(t *testing.T) {
	h := startRunner(t, nil)
	block := make(chan struct{})
	h.exec.set(func(f *fakeExec) { f.validateBlock = block })
	h.deliver(h.seal(t, nginxTask(t, 1)))
	<-h.exec.validating
	h.r.Stop()
	close(block)
	us, err := h.db.PendingTaskUpdates()
	require.NoError(t, err)
	require.Equal(t, []agentv1.TaskState{stFailed}, states(us))
	require.Equal(t, stoppedBeforeStart, us[0].GetReason())
	require.Equal(t, uint64(1), h.db.TaskHighWater())
	require.Zero(t, h.exec.executions())
}

func TestKeysAreReadPerTask(t *testing.T) {
	// Rotation: the runner picks up newly pinned keys without a restart.
	newK := newKey(t)
	var mu sync.Mutex
	var pinned map[string]ed25519.PublicKey
	h := startRunner(t, func(h *harness) {
		pinned = map[string]ed25519.PublicKey{h.key.ID: h.key.Pub}
		h.cfg.Keys = func() map[string]ed25519.PublicKey {
			mu.Lock()
			defer mu.Unlock()
			return pinned
		}
	})
	h.deliver(h.seal(t, nginxTask(t, 1)))
	h.waitUpdates(t, 2)
	mu.Lock()
	pinned = map[string]ed25519.PublicKey{h.key.ID: h.key.Pub, newK.ID: newK.Pub}
	mu.Unlock()
	env, err := task.Seal(newK, nginxTask(t, 2))
	require.NoError(t, err)
	h.deliver(env)
	us := h.waitUpdates(t, 4)
	require.Equal(t, stSucceeded, us[3].GetState())
}

func TestCapString(t *testing.T) {
	require.Equal(t, "abc", capString("abc", 10))
	s := capString(strings.Repeat("é", 3000), MaxOutputBytes)
	require.LessOrEqual(t, len(s), MaxOutputBytes)
	require.True(t, strings.HasSuffix(s, "… (truncated)"))
	require.Equal(t, "a\uFFFDb", capString("a\xffb", 10))
}

func TestCapMetrics(t *testing.T) {
	require.Nil(t, capMetrics(nil))
	m := map[string]float64{strings.Repeat("x", 200): 1, "bad\xff": 2}
	for i := range 100 {
		m[fmt.Sprintf("m%03d", i)] = float64(i)
	}
	got := capMetrics(m)
	require.Len(t, got, MaxMetrics)
	require.Equal(t, 0.0, got["m000"])
	require.Equal(t, 63.0, got["m063"])
	require.NotContains(t, got, "m064")
}
