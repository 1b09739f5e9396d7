package remediation

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/controlplane/store/bolt"
	"tend.dev/tend/internal/pki"
	"tend.dev/tend/internal/policy"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// countingStore counts the store's write transactions (each is one bbolt
// commit: two fdatasyncs, one for the pages and one for the meta page).
type countingStore struct {
	store.Store
	writes atomic.Int64
}

func (c *countingStore) CreateIncident(inc store.Incident) error {
	c.writes.Add(1)
	return c.Store.CreateIncident(inc)
}

func (c *countingStore) UpdateIncident(id string, fn func(*store.Incident) error) error {
	c.writes.Add(1)
	return c.Store.UpdateIncident(id, fn)
}

func (c *countingStore) CreateTask(t store.Task, seal func(*store.Task) error) (store.Task, error) {
	c.writes.Add(1)
	return c.Store.CreateTask(t, seal)
}

func (c *countingStore) SealTask(id string, seal func(*store.Task) error) (store.Task, error) {
	c.writes.Add(1)
	return c.Store.SealTask(id, seal)
}

func (c *countingStore) UpdateTask(id string, fn func(*store.Task) error) error {
	c.writes.Add(1)
	return c.Store.UpdateTask(id, fn)
}

func (c *countingStore) PutPolicyState(ps store.PolicyState) error {
	c.writes.Add(1)
	return c.Store.PutPolicyState(ps)
}

func (c *countingStore) UpdateRemediation(fn func(store.RemediationTx) error) error {
	c.writes.Add(1)
	return c.Store.UpdateRemediation(fn)
}

const benchPolicy = `apiVersion: tend.dev/v1
kind: Policy
metadata: {name: web}
spec:
  selector: {matchLabels: {role: web}}
  check: {type: process, interval: 1s, process: {name: web}}
  trigger: {failures: 1, window: 1}
  remediation:
    action: exec.run
    params: {argv: ["/bin/true"]}
    verify: {within: 1m}
    cooldown: 0s
`

// BenchmarkTriggerToTask is one whole incident per iteration on a real,
// fsync'd bbolt store (in $TMPDIR: put it on a disk, not a tmpfs): a
// failing result that completes the trigger, the signed task handed to the
// agent's stream (the time of that is trigger-to-task), the agent reporting
// it running and succeeded, and the passing result that verifies it. It
// reports the p50/p99 of trigger-to-task and the store's write transactions
// (and fsyncs) per incident.
func BenchmarkTriggerToTask(b *testing.B) {
	st, err := bolt.Open(filepath.Join(b.TempDir(), "tend.db"), bolt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	cs := &countingStore{Store: st}
	reg, err := fleet.New(fleet.Config{Store: st, MinTTL: time.Minute, Log: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Stop()
	ps, err := policy.Parse("p.yaml", []byte(benchPolicy))
	if err != nil {
		b.Fatal(err)
	}
	fp := fakePolicies{ps: map[string]*policy.Policy{"web": ps[0]}}
	key, _, err := pki.LoadOrCreateSigningKey(filepath.Join(b.TempDir(), "k"))
	if err != nil {
		b.Fatal(err)
	}
	// One agent per incident: the same check failing and passing in turn
	// would soon be flapping.
	sessions := make([]*fleet.Session, b.N)
	for i := range b.N {
		id := fmt.Sprintf("a%d", i)
		if err := st.CreateToken(store.Token{ID: "t" + id, SecretHash: []byte("h"), ExpiresAt: time.Now().Add(time.Hour), Uses: 1}); err != nil {
			b.Fatal(err)
		}
		a := store.Agent{ID: id, Name: id, Labels: map[string]string{"role": "web"}, EnrolledAt: time.Now()}
		if err := st.EnrollAgent("t"+id, []byte("h"), time.Now(), a); err != nil {
			b.Fatal(err)
		}
		reg.Add(a)
		sessions[i] = fleet.NewSession(context.Background(), id, 64)
		if _, err := reg.Attach(id, sessions[i], &agentv1.Hello{Labels: a.Labels}, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	m := New(Config{Store: cs, Fleet: reg, Policies: fp, Signer: func() *pki.SigningKey { return key }, Log: quiet})
	if err := m.Start(); err != nil {
		b.Fatal(err)
	}
	defer m.Stop()

	result := func(id string, seq uint64, status agentv1.CheckStatus) {
		m.OnResults(id, []*agentv1.CheckResult{{Seq: seq, CheckId: "web", Status: status, StartedAt: timestamppb.Now()}})
	}
	update := func(id, taskID string, s agentv1.TaskState) {
		if err := m.OnTaskUpdate(context.Background(), id, &agentv1.TaskUpdate{TaskId: taskID, State: s, At: timestamppb.Now()}); err != nil {
			b.Fatal(err)
		}
	}
	lat := make([]time.Duration, 0, b.N)
	writes0 := cs.writes.Load()
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("a%d", i)
		start := time.Now()
		result(id, 1, agentv1.CheckStatus_CHECK_STATUS_CRITICAL)
		var msg *agentv1.ConnectResponse
		select {
		case msg = <-sessions[i].Out():
		case <-time.After(10 * time.Second):
			b.Fatalf("no task for incident %d", i)
		}
		lat = append(lat, time.Since(start))
		tk := msg.GetTask()
		if tk == nil {
			b.Fatalf("expected a task, got %v", msg)
		}
		t, err := openEnvelope(tk.GetEnvelope(), key)
		if err != nil {
			b.Fatal(err)
		}
		update(id, t, agentv1.TaskState_TASK_STATE_RUNNING)
		update(id, t, agentv1.TaskState_TASK_STATE_SUCCEEDED)
		result(id, 2, agentv1.CheckStatus_CHECK_STATUS_OK)
	}
	// The last incident's verification is written by the loop after the
	// passing result: wait for it before counting.
	if err := m.call(context.Background(), func() error { return nil }); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	writes := cs.writes.Load() - writes0
	p50, p99 := quantiles(lat)
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(writes)/float64(b.N), "txs/incident")
	b.ReportMetric(2*float64(writes)/float64(b.N), "fsyncs/incident")
}

func openEnvelope(env []byte, key *pki.SigningKey) (string, error) {
	t, err := task.OpenTask(env, map[string]ed25519.PublicKey{key.ID: key.Pub})
	if err != nil {
		return "", err
	}
	return t.GetTaskId(), nil
}

func quantiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2], s[min(len(s)-1, len(s)*99/100)]
}
