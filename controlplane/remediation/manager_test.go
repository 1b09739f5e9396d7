package remediation

import (
	"context"
	"crypto/ed25519"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/controlplane/store/bolt"
	"tend.dev/tend/internal/pki"
	"tend.dev/tend/internal/policy"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fakePolicies struct{ ps map[string]*policy.Policy }

func (f fakePolicies) Lookup(name string) (*policy.Policy, uint64, bool) {
	p, ok := f.ps[name]
	return p, 1, ok
}

func (f fakePolicies) MatchedCount(name string, agents []store.Agent) int {
	n := 0
	for _, a := range agents {
		if f.ps[name].Matches(a.Labels) {
			n++
		}
	}
	return n
}

// harness is a manager over a real store and fleet registry, with agents
// attached through in-memory sessions: tasks sent to an agent are read from
// its session queue, and its results and task updates are fed by the test.
type harness struct {
	t        *testing.T
	policies fakePolicies
	st       store.Store
	fleet    *fleet.Registry
	m        *Manager
	key      *pki.SigningKey
	sessions map[string]*fleet.Session
	seq      map[string]uint64
}

func newHarness(t *testing.T, policyYAML string, agents ...string) *harness {
	t.Helper()
	return newHarnessWith(t, policyYAML, nil, agents...)
}

// newHarnessWith is newHarness with a change to the manager's Config.
func newHarnessWith(t *testing.T, policyYAML string, mod func(*Config), agents ...string) *harness {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "tend.db"), bolt.Options{NoSync: true})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	reg, err := fleet.New(fleet.Config{Store: st, MinTTL: time.Minute, Log: quiet})
	require.NoError(t, err)
	t.Cleanup(reg.Stop)
	ps, err := policy.Parse("p.yaml", []byte(policyYAML))
	require.NoError(t, err)
	fp := fakePolicies{ps: map[string]*policy.Policy{}}
	for _, p := range ps {
		fp.ps[p.Name()] = p
	}
	key, _, err := pki.LoadOrCreateSigningKey(filepath.Join(t.TempDir(), "k"))
	require.NoError(t, err)
	h := &harness{t: t, policies: fp, st: st, fleet: reg, key: key, sessions: map[string]*fleet.Session{}, seq: map[string]uint64{}}
	for _, id := range agents {
		require.NoError(t, st.CreateToken(store.Token{ID: "t" + id, SecretHash: []byte("h"), ExpiresAt: time.Now().Add(time.Hour), Uses: 1}))
		a := store.Agent{ID: id, Name: id, Labels: map[string]string{"role": "web"}, EnrolledAt: time.Now()}
		require.NoError(t, st.EnrollAgent("t"+id, []byte("h"), time.Now(), a))
		reg.Add(a)
		s := fleet.NewSession(context.Background(), id, 64)
		_, err := reg.Attach(id, s, &agentv1.Hello{Labels: map[string]string{"role": "web"}}, time.Now())
		require.NoError(t, err)
		h.sessions[id] = s
	}
	cfg := Config{Store: st, Fleet: reg, Policies: fp, Signer: func() *pki.SigningKey { return key }, Log: quiet}
	if mod != nil {
		mod(&cfg)
	}
	h.m = New(cfg)
	require.NoError(t, h.m.Start())
	t.Cleanup(h.m.Stop)
	return h
}

func (h *harness) result(agent, check string, status agentv1.CheckStatus) {
	h.seq[agent]++
	h.m.OnResults(agent, []*agentv1.CheckResult{{Seq: h.seq[agent], CheckId: check, Status: status, StartedAt: timestamppb.Now()}})
}

// task waits for a task delivered to the agent and opens it like the agent.
func (h *harness) task(agent string) *taskv1.Task {
	h.t.Helper()
	select {
	case m := <-h.sessions[agent].Out():
		env := m.GetTask().GetEnvelope()
		require.NotNil(h.t, env, "expected a task, got %v", m)
		return h.openTask(agent, env)
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no task for %s", agent)
	}
	return nil
}

// openTask opens an envelope like the agent.
func (h *harness) openTask(agent string, env []byte) *taskv1.Task {
	h.t.Helper()
	tk, err := task.OpenTask(env, map[string]ed25519.PublicKey{h.key.ID: h.key.Pub})
	require.NoError(h.t, err)
	require.Equal(h.t, agent, tk.GetAgentId())
	return tk
}

func (h *harness) noTask(agent string) {
	h.t.Helper()
	select {
	case m := <-h.sessions[agent].Out():
		h.t.Fatalf("unexpected message to %s: %v", agent, m)
	case <-time.After(300 * time.Millisecond):
	}
}

func (h *harness) update(agent string, tk *taskv1.Task, st agentv1.TaskState, reason string) {
	h.t.Helper()
	require.NoError(h.t, h.m.OnTaskUpdate(context.Background(), agent, &agentv1.TaskUpdate{TaskId: tk.GetTaskId(), Seq: tk.GetSeq(), State: st, Reason: reason, At: timestamppb.Now()}))
}

func (h *harness) incident(agent, pol string, states ...string) store.Incident {
	h.t.Helper()
	var got store.Incident
	require.Eventually(h.t, func() bool {
		incs, err := h.st.ListIncidents(store.IncidentFilter{AgentID: agent, Policy: pol})
		if err != nil || len(incs) == 0 {
			return false
		}
		got = incs[0]
		for _, s := range states {
			if got.State == s {
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond, "incident of %s on %s never reached %v (last: %s)", pol, agent, states, got.State)
	return got
}

func timelineKinds(inc store.Incident) []string {
	var out []string
	for _, e := range inc.Timeline {
		out = append(out, e.Kind)
	}
	return out
}

const basePolicy = `apiVersion: tend.dev/v1
kind: Policy
metadata: {name: web}
spec:
  selector: {matchLabels: {role: web}}
  mode: MODE
  check: {type: process, interval: 1s, process: {name: web}}
  trigger: {failures: 2, window: 3}
  remediation:
    action: exec.run
    params: {argv: ["/bin/true"]}
    verify: {within: 1s}
    maxAttempts: 2
    backoff: 1s
    cooldown: 0s
  limits: {maxConcurrent: "1"}
`

func policyYAML(mode string) string {
	out := []byte(basePolicy)
	return string(replace(out, "MODE", mode))
}

func replace(b []byte, old, new string) []byte {
	s := string(b)
	for i := 0; i+len(old) <= len(s); i++ {
		if s[i:i+len(old)] == old {
			return []byte(s[:i] + new + s[i+len(old):])
		}
	}
	return b
}

const (
	crit = agentv1.CheckStatus_CHECK_STATUS_CRITICAL
	ok   = agentv1.CheckStatus_CHECK_STATUS_OK
)

func TestTriggerSignedTaskVerifiedRecovery(t *testing.T) {
	h := newHarness(t, policyYAML("enforce"), "a1")
	h.result("a1", "web", crit)
	h.noTask("a1") // 1 of 3: not yet
	h.result("a1", "web", crit)
	tk := h.task("a1")
	require.Equal(t, uint64(1), tk.GetSeq())
	require.Equal(t, "exec.run", tk.GetAction())
	require.True(t, tk.GetExpiresAt().AsTime().After(time.Now()))
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_RUNNING, "")
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_SUCCEEDED, "")
	h.incident("a1", "web", store.IncidentVerifying)
	h.result("a1", "web", ok)
	inc := h.incident("a1", "web", store.IncidentResolved)
	require.Equal(t, []string{"detected", "decided", "signed", "sent", "started", "finished", "verifying", "verified"}, timelineKinds(inc))
	got, err := h.st.GetTask(tk.GetTaskId())
	require.NoError(t, err)
	require.Equal(t, store.TaskSucceeded, got.State)

	// A late or replayed update of a finished task changes nothing.
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_REJECTED, "replay")
	got, err = h.st.GetTask(tk.GetTaskId())
	require.NoError(t, err)
	require.Equal(t, store.TaskSucceeded, got.State)
}

func TestShadowModeSendsNothing(t *testing.T) {
	h := newHarness(t, policyYAML("shadow"), "a1")
	h.result("a1", "web", crit)
	h.result("a1", "web", crit)
	inc := h.incident("a1", "web", store.IncidentSuppressed)
	h.noTask("a1")
	last := inc.Timeline[len(inc.Timeline)-1]
	require.Equal(t, "shadow", last.Rule)
	require.Contains(t, last.Message, "would")
}

func TestMaxConcurrentWaitsForAFreeSlot(t *testing.T) {
	h := newHarness(t, policyYAML("enforce"), "a1", "a2")
	for _, a := range []string{"a1", "a2"} {
		h.result(a, "web", crit)
		h.result(a, "web", crit)
	}
	tk := h.task("a1")
	inc := h.incident("a2", "web", store.IncidentSuppressed)
	require.Equal(t, "max_concurrent", inc.Timeline[len(inc.Timeline)-1].Rule)
	h.noTask("a2")
	// a1's task ends: the slot is free and a2 acts at once.
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_FAILED, "exit 1")
	tk2 := h.task("a2")
	require.Equal(t, uint64(1), tk2.GetSeq(), "sequence numbers are per agent")
}

func TestRejectedTaskEscalatesAtOnce(t *testing.T) {
	h := newHarness(t, policyYAML("enforce"), "a1")
	h.result("a1", "web", crit)
	h.result("a1", "web", crit)
	tk := h.task("a1")
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_REJECTED, "action exec.run not in the agent's allow-list")
	inc := h.incident("a1", "web", store.IncidentEscalated)
	require.Contains(t, inc.Reason, "allow-list")
	h.noTask("a1")
}

func TestUnverifiedIsRetriedThenEscalated(t *testing.T) {
	h := newHarness(t, policyYAML("enforce"), "a1")
	h.result("a1", "web", crit)
	h.result("a1", "web", crit)
	for attempt := 1; attempt <= 2; attempt++ {
		tk := h.task("a1")
		require.EqualValues(t, attempt, tk.GetAttempt())
		h.update("a1", tk, agentv1.TaskState_TASK_STATE_SUCCEEDED, "")
		h.result("a1", "web", crit) // still broken
	}
	inc := h.incident("a1", "web", store.IncidentEscalated)
	require.Equal(t, 2, inc.Attempts)
	require.Contains(t, timelineKinds(inc), "retry")
	require.Contains(t, inc.Reason, "2 of 2 attempts")
}

func TestFlappingCheckIsNotRemediated(t *testing.T) {
	h := newHarness(t, string(replace([]byte(policyYAML("enforce")), "failures: 2, window: 3", "failures: 3, window: 3")), "a1")
	// ok, crit, ok, crit...: never 3 failures in 3, but a state change at
	// every result: flapping.
	for i := 0; i < 20; i++ {
		if i%2 == 0 {
			h.result("a1", "web", ok)
		} else {
			h.result("a1", "web", crit)
		}
	}
	inc := h.incident("a1", "web", store.IncidentFlapping)
	require.Contains(t, inc.Reason, "flap")
	h.noTask("a1")
}

// An escalation must not turn into a loop of new incidents and tasks while
// the check keeps failing.
func TestEscalationDoesNotLoop(t *testing.T) {
	h := newHarness(t, policyYAML("enforce"), "a1")
	h.result("a1", "web", crit)
	h.result("a1", "web", crit)
	tk := h.task("a1")
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_REJECTED, "not allowed")
	h.incident("a1", "web", store.IncidentEscalated)
	for i := 0; i < 6; i++ {
		h.result("a1", "web", crit)
	}
	h.noTask("a1")
	incs, err := h.st.ListIncidents(store.IncidentFilter{AgentID: "a1"})
	require.NoError(t, err)
	require.Len(t, incs, 1, "no new incident while the check keeps failing")

	// Once it has passed a whole window on its own, a new failure is a new
	// incident again.
	for i := 0; i < 3; i++ {
		h.result("a1", "web", ok)
	}
	h.result("a1", "web", crit)
	h.result("a1", "web", crit)
	h.task("a1")
}

// A flapping check that then fails steadily is remediated.
func TestFlappingThenSteadyFailureIsRemediated(t *testing.T) {
	h := newHarness(t, string(replace([]byte(policyYAML("enforce")), "failures: 2, window: 3", "failures: 3, window: 3")), "a1")
	for i := 0; i < 20; i++ {
		if i%2 == 0 {
			h.result("a1", "web", ok)
		} else {
			h.result("a1", "web", crit)
		}
	}
	h.incident("a1", "web", store.IncidentFlapping)
	for i := 0; i < 30; i++ {
		h.result("a1", "web", crit)
	}
	h.task("a1")
}

// A policy trialled in shadow mode acts on its open incidents as soon as it
// is switched to enforce.
func TestShadowToEnforceActsOnOpenIncidents(t *testing.T) {
	h := newHarness(t, policyYAML("shadow"), "a1")
	h.result("a1", "web", crit)
	h.result("a1", "web", crit)
	h.incident("a1", "web", store.IncidentSuppressed)
	h.noTask("a1")
	ps, err := policy.Parse("p.yaml", []byte(policyYAML("enforce")))
	require.NoError(t, err)
	h.policies.ps["web"] = ps[0]
	h.m.PolicyChanged("web")
	h.task("a1")
}

// After a control-plane restart the loop picks up an open incident whose
// task's outcome was lost, instead of leaving it stuck.
func TestRestartFollowsUpAnIncidentLeftRemediating(t *testing.T) {
	h := newHarness(t, policyYAML("enforce"), "a1")
	h.result("a1", "web", crit)
	h.result("a1", "web", crit)
	tk := h.task("a1")
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_RUNNING, "")
	h.m.Stop()
	// The task ended, but the restart happened before the incident moved on.
	require.NoError(t, h.st.UpdateTask(tk.GetTaskId(), func(st *store.Task) error {
		st.State = store.TaskFailed
		st.FinishedAt = time.Now()
		return nil
	}))
	m2 := New(Config{Store: h.st, Fleet: h.fleet, Policies: h.policies, Signer: func() *pki.SigningKey { return h.key }, Log: quiet})
	require.NoError(t, m2.Start())
	t.Cleanup(m2.Stop)
	h.m = m2
	tk2 := h.task("a1")
	require.EqualValues(t, 2, tk2.GetAttempt())
	inc := h.incident("a1", "web", store.IncidentRemediating)
	require.Contains(t, timelineKinds(inc), "retry")
}

// recordingStore records the writes of each committed transaction.
type recordingStore struct {
	store.Store
	mu  sync.Mutex
	txs [][]string
}

type recordingTx struct {
	store.RemediationTx
	ops *[]string
}

func (r recordingTx) CreateIncident(inc store.Incident) error {
	*r.ops = append(*r.ops, "CreateIncident")
	return r.RemediationTx.CreateIncident(inc)
}

func (r recordingTx) UpdateIncident(id string, fn func(*store.Incident) error) error {
	*r.ops = append(*r.ops, "UpdateIncident")
	return r.RemediationTx.UpdateIncident(id, fn)
}

func (r recordingTx) CreateTask(t store.Task, seal func(*store.Task) error) (store.Task, error) {
	*r.ops = append(*r.ops, "CreateTask")
	return r.RemediationTx.CreateTask(t, seal)
}

func (r recordingTx) UpdateTask(id string, fn func(*store.Task) error) error {
	*r.ops = append(*r.ops, "UpdateTask")
	return r.RemediationTx.UpdateTask(id, fn)
}

func (r *recordingStore) UpdateRemediation(fn func(store.RemediationTx) error) error {
	var ops []string
	err := r.Store.UpdateRemediation(func(tx store.RemediationTx) error {
		ops = ops[:0]
		return fn(recordingTx{RemediationTx: tx, ops: &ops})
	})
	if err == nil {
		r.mu.Lock()
		r.txs = append(r.txs, ops)
		r.mu.Unlock()
	}
	return err
}

func (r *recordingStore) committed() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.txs)
}

// A decision is one transaction, durable before the task leaves: the
// incident, the signed task and the events that explain it; the "sent"
// mark and the agent's "running" are written later, every event kept.
func TestOneTransactionPerDecision(t *testing.T) {
	var rec *recordingStore
	h := newHarnessWith(t, policyYAML("enforce"), func(c *Config) {
		rec = &recordingStore{Store: c.Store}
		c.Store = rec
	}, "a1")
	h.result("a1", "web", crit)
	h.result("a1", "web", crit)
	tk := h.task("a1")

	// Already durable when the agent has it, without waiting.
	txs := rec.committed()
	require.NotEmpty(t, txs)
	require.Equal(t, []string{"CreateIncident", "CreateTask", "UpdateIncident", "UpdateIncident"}, txs[0], "the decision's transaction")
	stored, err := h.st.GetTask(tk.GetTaskId())
	require.NoError(t, err)
	require.Equal(t, tk.GetSeq(), stored.Seq)
	env, err := task.OpenTask(stored.Envelope, map[string]ed25519.PublicKey{h.key.ID: h.key.Pub})
	require.NoError(t, err)
	require.Equal(t, tk.GetTaskId(), env.GetTaskId())
	seq, err := h.st.TaskSeq("a1")
	require.NoError(t, err)
	require.Equal(t, tk.GetSeq(), seq)
	inc, err := h.st.GetIncident(stored.IncidentID)
	require.NoError(t, err)
	require.Equal(t, store.IncidentRemediating, inc.State)
	kinds := timelineKinds(inc) // "sent" follows, when it was written since
	require.GreaterOrEqual(t, len(kinds), 3)
	require.Equal(t, []string{"detected", "decided", "signed"}, kinds[:3])
	require.Equal(t, 1, inc.Attempts)

	// The agent's "running": the task's state and the event in one
	// transaction, with the "sent" mark if it still waits.
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_RUNNING, "")
	got, err := h.st.GetTask(tk.GetTaskId())
	require.NoError(t, err)
	require.Equal(t, store.TaskRunning, got.State)
	h.update("a1", tk, agentv1.TaskState_TASK_STATE_SUCCEEDED, "")
	h.result("a1", "web", ok)
	inc = h.incident("a1", "web", store.IncidentResolved)
	require.Equal(t, []string{"detected", "decided", "signed", "sent", "started", "finished", "verifying", "verified"}, timelineKinds(inc))
	got, err = h.st.GetTask(tk.GetTaskId())
	require.NoError(t, err)
	require.Equal(t, store.TaskSucceeded, got.State)
	require.False(t, got.SentAt.IsZero(), "the sent mark is written")
	// The decision, "running", "succeeded", and at most three writes
	// behind ("sent" if it did not wait for "running", "finished" and
	// "verifying", "verified"): 12 before.
	require.LessOrEqual(t, len(rec.committed()), 6)
}

// A check that fails again right after its verified recovery opens a new
// incident and gets a new task, while the recovery may still wait to be
// written.
func TestFailsAgainRightAfterRecovery(t *testing.T) {
	h := newHarness(t, benchPolicy, "a1")
	for i := range 3 {
		h.result("a1", "web", crit)
		tk := h.task("a1")
		require.EqualValues(t, i+1, tk.GetSeq())
		h.update("a1", tk, agentv1.TaskState_TASK_STATE_RUNNING, "")
		h.update("a1", tk, agentv1.TaskState_TASK_STATE_SUCCEEDED, "")
		h.result("a1", "web", ok)
	}
	incs, err := h.st.ListIncidents(store.IncidentFilter{AgentID: "a1"})
	require.NoError(t, err)
	require.Len(t, incs, 3)
}

// A write that fails does not take the others with it: not the pending
// writes, not the commit's own.
func TestCommitIsolatesAFailingWrite(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "tend.db"), bolt.Options{NoSync: true})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	m := New(Config{Store: st, Log: quiet})
	create := func(id string) func(store.RemediationTx) error {
		return func(tx store.RemediationTx) error {
			return tx.CreateIncident(store.Incident{ID: id, AgentID: "a1", Policy: id, State: store.IncidentOpen})
		}
	}
	exists := func(id string) bool {
		_, err := st.GetIncident(id)
		return err == nil
	}

	m.later("a", create("inc-a"))
	m.later("missing", func(tx store.RemediationTx) error {
		return tx.UpdateIncident("inc-missing", appendEvents(store.Event{Kind: "x"}))
	})
	m.later("b", create("inc-b"))
	require.NoError(t, m.commit(create("inc-c")))
	require.True(t, exists("inc-a") && exists("inc-b") && exists("inc-c"))
	require.Empty(t, m.pending)

	// The commit's own write is refused: the pending ones are written.
	m.later("d", create("inc-d"))
	err = m.commit(create("inc-a")) // used id
	require.ErrorIs(t, err, store.ErrExists)
	require.True(t, exists("inc-d"))

	m.later("e", create("inc-e"))
	m.flush()
	require.True(t, exists("inc-e"))
	require.NoError(t, st.Verify())
}
