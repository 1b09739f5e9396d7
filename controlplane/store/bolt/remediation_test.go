package bolt

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/bbolt"

	"tend.dev/tend/controlplane/store"
)

func incident(id, agent, policy string, opened time.Time) store.Incident {
	return store.Incident{
		ID: id, AgentID: agent, Policy: policy, PolicyVersion: 1,
		State: store.IncidentOpen, OpenedAt: opened, UpdatedAt: opened,
		Reason:   "check failed 3 times in a row",
		Timeline: []store.Event{{At: opened, Kind: "detected", Message: "triggered"}},
	}
}

func task(id, incidentID, agent string, created time.Time) store.Task {
	return store.Task{
		ID: id, IncidentID: incidentID, AgentID: agent, Policy: "web", PolicyVersion: 1,
		Action: "service.restart", Params: []byte(`{"unit":"nginx.service"}`),
		State: store.TaskPending, Attempt: 1, CreatedAt: created,
		NotBefore: created, ExpiresAt: created.Add(5 * time.Minute),
	}
}

// seal is a trivial seal: the "envelope" names the task and its seq.
func seal(tk *store.Task) error {
	tk.Envelope = fmt.Appendf(nil, "signed %s seq %d", tk.ID, tk.Seq)
	return nil
}

func createTask(t testing.TB, s *Store, tk store.Task) store.Task {
	t.Helper()
	got, err := s.CreateTask(tk, seal)
	require.NoError(t, err)
	return got
}

func setIncidentState(state string) func(*store.Incident) error {
	return func(inc *store.Incident) error {
		inc.State = state
		return nil
	}
}

func setTaskState(state string) func(*store.Task) error {
	return func(tk *store.Task) error {
		tk.State = state
		return nil
	}
}

func incidentIDs(incs []store.Incident) []string {
	out := make([]string, len(incs))
	for i, inc := range incs {
		out[i] = inc.ID
	}
	return out
}

func taskIDs(ts []store.Task) []string {
	out := make([]string, len(ts))
	for i, tk := range ts {
		out[i] = tk.ID
	}
	return out
}

func TestOneOpenIncidentPerAgentAndPolicy(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))

	err := s.CreateIncident(incident("i2", "a1", "web", t0.Add(time.Second)))
	require.ErrorIs(t, err, store.ErrExists)
	require.ErrorContains(t, err, "open incident i1")
	_, err = s.GetIncident("i2")
	require.ErrorIs(t, err, store.ErrNotFound)

	// Other policies and other agents are independent.
	require.NoError(t, s.CreateIncident(incident("i3", "a1", "disk", t0)))
	require.NoError(t, s.CreateIncident(incident("i4", "a2", "web", t0)))

	// Non-terminal states keep the incident open.
	for _, st := range []string{store.IncidentRemediating, store.IncidentVerifying, store.IncidentSuppressed, store.IncidentFlapping} {
		require.NoError(t, s.UpdateIncident("i1", setIncidentState(st)))
		open, err := s.OpenIncident("a1", "web")
		require.NoError(t, err)
		require.Equal(t, "i1", open.ID)
		require.Equal(t, st, open.State)
		require.ErrorIs(t, s.CreateIncident(incident("i2", "a1", "web", t0.Add(time.Second))), store.ErrExists, st)
	}

	// Closed by resolve or escalate, a new one may open.
	for i, closing := range []string{store.IncidentResolved, store.IncidentEscalated} {
		open, err := s.OpenIncident("a1", "web")
		require.NoError(t, err)
		require.NoError(t, s.UpdateIncident(open.ID, setIncidentState(closing)))
		_, err = s.OpenIncident("a1", "web")
		require.ErrorIs(t, err, store.ErrNotFound)
		require.ErrorContains(t, err, `agent "a1"`)

		next := fmt.Sprintf("i1-%d", i)
		require.NoError(t, s.CreateIncident(incident(next, "a1", "web", t0.Add(time.Duration(i+1)*time.Minute))))
		open, err = s.OpenIncident("a1", "web")
		require.NoError(t, err)
		require.Equal(t, next, open.ID)
	}
	require.NoError(t, s.Verify())
}

func TestCreateIncidentRefusals(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	done := incident("done", "a1", "web", t0)
	done.State = store.IncidentResolved
	require.NoError(t, s.CreateIncident(done))

	with := func(fn func(*store.Incident)) store.Incident {
		inc := incident("new", "a1", "disk", t0)
		fn(&inc)
		return inc
	}
	tests := []struct {
		name    string
		inc     store.Incident
		wantIs  error
		wantErr string
	}{
		{name: "id of a closed incident", inc: with(func(i *store.Incident) { i.ID = "done" }), wantIs: store.ErrExists, wantErr: `"done"`},
		{name: "empty id", inc: with(func(i *store.Incident) { i.ID = "" }), wantErr: "empty incident id"},
		{name: "NUL in id", inc: with(func(i *store.Incident) { i.ID = "a\x00b" }), wantErr: "contains a NUL byte"},
		{name: "empty agent", inc: with(func(i *store.Incident) { i.AgentID = "" }), wantErr: "empty agent id"},
		{name: "NUL in agent", inc: with(func(i *store.Incident) { i.AgentID = "a\x00" }), wantErr: "contains a NUL byte"},
		{name: "empty policy", inc: with(func(i *store.Incident) { i.Policy = "" }), wantErr: "empty policy"},
		{name: "empty state", inc: with(func(i *store.Incident) { i.State = "" }), wantErr: `unknown state ""`},
		{name: "unknown state", inc: with(func(i *store.Incident) { i.State = "resolve" }), wantErr: `unknown state "resolve" (want one of open, remediating`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.CreateIncident(tt.inc)
			require.Error(t, err)
			if tt.wantIs != nil {
				require.ErrorIs(t, err, tt.wantIs)
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
	list, err := s.ListIncidents(store.IncidentFilter{})
	require.NoError(t, err)
	require.Equal(t, []string{"done"}, incidentIDs(list))
	require.NoError(t, s.Verify())
}

func TestCreateIncidentDefaultsTimes(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	s.now = func() time.Time { return t0 }
	inc := incident("i1", "a1", "web", time.Time{})
	inc.UpdatedAt = time.Time{}
	require.NoError(t, s.CreateIncident(inc))
	got, err := s.GetIncident("i1")
	require.NoError(t, err)
	require.True(t, got.OpenedAt.Equal(t0))
	require.True(t, got.UpdatedAt.Equal(t0))
}

func TestUpdateIncident(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))

	// The timeline round-trips, appended to in several updates.
	events := []store.Event{
		{At: t0.Add(time.Second), Kind: "decided", Message: "restart allowed"},
		{At: t0.Add(2 * time.Second), Kind: "suppressed", Message: "cooldown", Rule: "cooldown"},
		{At: t0.Add(3 * time.Second), Kind: "sent", Message: "task sent", TaskID: "t1"},
	}
	for _, ev := range events {
		require.NoError(t, s.UpdateIncident("i1", func(inc *store.Incident) error {
			inc.Timeline = append(inc.Timeline, ev)
			inc.UpdatedAt = ev.At
			inc.Attempts++
			return nil
		}))
	}
	got, err := s.GetIncident("i1")
	require.NoError(t, err)
	require.Len(t, got.Timeline, 4)
	require.Equal(t, "detected", got.Timeline[0].Kind)
	for i, ev := range events {
		require.True(t, ev.At.Equal(got.Timeline[i+1].At))
		got.Timeline[i+1].At = ev.At
		require.Equal(t, ev, got.Timeline[i+1])
	}
	require.Equal(t, 3, got.Attempts)
	require.True(t, got.UpdatedAt.Equal(events[2].At))

	// fn's error aborts, as is.
	boom := errors.New("boom")
	require.Equal(t, boom, s.UpdateIncident("i1", func(inc *store.Incident) error {
		inc.State = store.IncidentResolved
		return boom
	}))

	refusals := []struct {
		name    string
		fn      func(*store.Incident)
		wantErr string
	}{
		{name: "id", fn: func(i *store.Incident) { i.ID = "i9" }, wantErr: "the id cannot change"},
		{name: "agent", fn: func(i *store.Incident) { i.AgentID = "a2" }, wantErr: "the agent cannot change"},
		{name: "policy", fn: func(i *store.Incident) { i.Policy = "disk" }, wantErr: "the policy cannot change"},
		{name: "unknown state", fn: func(i *store.Incident) { i.State = "done" }, wantErr: `unknown state "done"`},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			err := s.UpdateIncident("i1", func(inc *store.Incident) error {
				inc.Reason = "changed"
				tt.fn(inc)
				return nil
			})
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
	after, err := s.GetIncident("i1")
	require.NoError(t, err)
	require.Equal(t, got.Reason, after.Reason, "nothing written by refused updates")
	require.Equal(t, store.IncidentOpen, after.State)

	err = s.UpdateIncident("nope", setIncidentState(store.IncidentResolved))
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorContains(t, err, `"nope"`)

	// Terminal: never non-terminal again, but may change otherwise.
	require.NoError(t, s.UpdateIncident("i1", setIncidentState(store.IncidentEscalated)))
	for _, st := range []string{store.IncidentOpen, store.IncidentRemediating, store.IncidentSuppressed} {
		err := s.UpdateIncident("i1", setIncidentState(st))
		require.ErrorIs(t, err, store.ErrTerminal)
		require.ErrorContains(t, err, "it is escalated and cannot become "+st)
	}
	require.NoError(t, s.UpdateIncident("i1", setIncidentState(store.IncidentResolved)))
	require.NoError(t, s.UpdateIncident("i1", func(inc *store.Incident) error {
		inc.Timeline = append(inc.Timeline, store.Event{At: t0.Add(time.Hour), Kind: "resolved", Message: "ok later"})
		return nil
	}))
	_, err = s.OpenIncident("a1", "web")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.NoError(t, s.Verify())
}

func TestUpdateIncidentMovesTimeIndex(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))
	require.NoError(t, s.CreateIncident(incident("i2", "a1", "disk", t0.Add(time.Minute))))
	require.NoError(t, s.UpdateIncident("i1", func(inc *store.Incident) error {
		inc.OpenedAt = t0.Add(time.Hour)
		return nil
	}))
	list, err := s.ListIncidents(store.IncidentFilter{})
	require.NoError(t, err)
	require.Equal(t, []string{"i1", "i2"}, incidentIDs(list))
	list, err = s.ListIncidents(store.IncidentFilter{AgentID: "a1"})
	require.NoError(t, err)
	require.Equal(t, []string{"i1", "i2"}, incidentIDs(list))
	require.NoError(t, s.Verify())
}

func TestListIncidents(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	// Created out of time order; ids chosen so that time order is not id
	// order.
	fixtures := []struct {
		id, agent, policy string
		minute            int
		state             string
	}{
		{"k", "a1", "web", 5, store.IncidentResolved},
		{"b", "a1", "web", 9, store.IncidentOpen},
		{"z", "a1", "disk", 1, store.IncidentEscalated},
		{"c", "a2", "web", 7, store.IncidentRemediating},
		{"a", "a2", "disk", 3, store.IncidentResolved},
		{"m", "a10", "web", 8, store.IncidentSuppressed},
		{"q", "a2", "disk", 9, store.IncidentOpen}, // same time as b
	}
	for _, f := range fixtures {
		inc := incident(f.id, f.agent, f.policy, t0.Add(time.Duration(f.minute)*time.Minute))
		require.NoError(t, s.CreateIncident(inc))
		if f.state != store.IncidentOpen {
			require.NoError(t, s.UpdateIncident(f.id, setIncidentState(f.state)))
		}
	}
	tests := []struct {
		name   string
		filter store.IncidentFilter
		want   []string
	}{
		{name: "all", want: []string{"q", "b", "m", "c", "k", "a", "z"}},
		{name: "agent", filter: store.IncidentFilter{AgentID: "a1"}, want: []string{"b", "k", "z"}},
		{name: "agent is not a prefix", filter: store.IncidentFilter{AgentID: "a"}, want: []string{}},
		{name: "policy", filter: store.IncidentFilter{Policy: "disk"}, want: []string{"q", "a", "z"}},
		{name: "agent and policy", filter: store.IncidentFilter{AgentID: "a2", Policy: "disk"}, want: []string{"q", "a"}},
		{name: "open", filter: store.IncidentFilter{OpenOnly: true}, want: []string{"q", "b", "m", "c"}},
		{name: "open of agent", filter: store.IncidentFilter{OpenOnly: true, AgentID: "a2"}, want: []string{"q", "c"}},
		{name: "open of policy", filter: store.IncidentFilter{OpenOnly: true, Policy: "web"}, want: []string{"b", "m", "c"}},
		{name: "open of agent and policy", filter: store.IncidentFilter{OpenOnly: true, AgentID: "a1", Policy: "web"}, want: []string{"b"}},
		{name: "none open", filter: store.IncidentFilter{OpenOnly: true, AgentID: "a1", Policy: "disk"}, want: []string{}},
		{name: "unknown agent", filter: store.IncidentFilter{AgentID: "nope"}, want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.ListIncidents(tt.filter)
			require.NoError(t, err)
			require.Equal(t, tt.want, incidentIDs(got))
		})
	}
}

func TestCreateTaskSeq(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))
	require.NoError(t, s.CreateIncident(incident("i2", "a2", "web", t0)))
	require.NoError(t, s.CreateIncident(incident("i3", "a1", "disk", t0)))

	seq, err := s.TaskSeq("a1")
	require.NoError(t, err)
	require.Zero(t, seq)

	steps := []struct {
		id, incident, agent string
		wantSeq             uint64
	}{
		{"t1", "i1", "a1", 1},
		{"t2", "i1", "a1", 2},
		{"t3", "i2", "a2", 1},
		{"t4", "i3", "a1", 3}, // per agent, not per incident
		{"t5", "i2", "a2", 2},
		{"t6", "i1", "a1", 4},
	}
	for i, st := range steps {
		in := task(st.id, st.incident, st.agent, t0.Add(time.Duration(i)*time.Second))
		in.Seq = 99 // ignored
		got := createTask(t, s, in)
		require.Equal(t, st.wantSeq, got.Seq, st.id)
		require.Equal(t, fmt.Sprintf("signed %s seq %d", st.id, st.wantSeq), string(got.Envelope))

		stored, err := s.GetTask(st.id)
		require.NoError(t, err)
		require.True(t, got.CreatedAt.Equal(stored.CreatedAt))
		stored.CreatedAt, stored.NotBefore, stored.ExpiresAt = got.CreatedAt, got.NotBefore, got.ExpiresAt
		require.Equal(t, got, stored)
	}
	for agent, want := range map[string]uint64{"a1": 4, "a2": 2, "a3": 0} {
		seq, err := s.TaskSeq(agent)
		require.NoError(t, err)
		require.Equal(t, want, seq, agent)
	}
	_, err = s.GetTask("nope")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.ErrorContains(t, err, `task "nope"`)
	require.NoError(t, s.Verify())
}

func TestCreateTaskSealFailureStoresNothing(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))
	createTask(t, s, task("t1", "i1", "a1", t0))

	boom := errors.New("signing key unavailable")
	var sawSeq uint64
	_, err := s.CreateTask(task("t2", "i1", "a1", t0), func(tk *store.Task) error {
		sawSeq = tk.Seq
		tk.Envelope = []byte("half done")
		return boom
	})
	require.ErrorIs(t, err, boom)
	require.ErrorContains(t, err, `create task "t2": seal`)
	require.Equal(t, uint64(2), sawSeq)

	_, err = s.GetTask("t2")
	require.ErrorIs(t, err, store.ErrNotFound)
	seq, err := s.TaskSeq("a1")
	require.NoError(t, err)
	require.Equal(t, uint64(1), seq, "the seq was not consumed")
	list, err := s.ListTasks(store.TaskFilter{})
	require.NoError(t, err)
	require.Equal(t, []string{"t1"}, taskIDs(list))

	// A panicking seal rolls back too.
	require.Panics(t, func() {
		_, _ = s.CreateTask(task("t2", "i1", "a1", t0), func(*store.Task) error { panic("bug") })
	})
	seq, err = s.TaskSeq("a1")
	require.NoError(t, err)
	require.Equal(t, uint64(1), seq)

	// The same id then gets the seq.
	got := createTask(t, s, task("t2", "i1", "a1", t0))
	require.Equal(t, uint64(2), got.Seq)
	require.NoError(t, s.Verify())
}

func TestCreateTaskRefusals(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))
	closed := incident("closed", "a1", "disk", t0)
	closed.State = store.IncidentResolved
	require.NoError(t, s.CreateIncident(closed))
	createTask(t, s, task("t1", "i1", "a1", t0))

	with := func(fn func(*store.Task)) store.Task {
		tk := task("new", "i1", "a1", t0)
		fn(&tk)
		return tk
	}
	tests := []struct {
		name    string
		tk      store.Task
		seal    func(*store.Task) error
		nilSeal bool
		wantIs  error
		wantErr string
	}{
		{name: "same id", tk: with(func(tk *store.Task) { tk.ID = "t1" }), wantIs: store.ErrExists, wantErr: `"t1"`},
		{name: "unknown incident", tk: with(func(tk *store.Task) { tk.IncidentID = "i9" }), wantIs: store.ErrNotFound, wantErr: `incident "i9"`},
		{name: "other agent's incident", tk: with(func(tk *store.Task) { tk.AgentID = "a2" }), wantErr: "it is for agent a2 but incident i1 is of agent a1"},
		{name: "closed incident", tk: with(func(tk *store.Task) { tk.IncidentID = "closed" }), wantIs: store.ErrTerminal, wantErr: "incident closed is resolved"},
		{name: "empty id", tk: with(func(tk *store.Task) { tk.ID = "" }), wantErr: "empty task id"},
		{name: "empty incident", tk: with(func(tk *store.Task) { tk.IncidentID = "" }), wantErr: "empty incident id"},
		{name: "NUL in incident", tk: with(func(tk *store.Task) { tk.IncidentID = "i\x001" }), wantErr: "contains a NUL byte"},
		{name: "empty agent", tk: with(func(tk *store.Task) { tk.AgentID = "" }), wantErr: "empty agent id"},
		{name: "empty action", tk: with(func(tk *store.Task) { tk.Action = "" }), wantErr: "empty action"},
		{name: "unknown state", tk: with(func(tk *store.Task) { tk.State = "queued" }), wantErr: `unknown state "queued"`},
		{name: "params not JSON", tk: with(func(tk *store.Task) { tk.Params = []byte("{unit") }), wantErr: "params are not valid JSON"},
		{name: "nil seal", tk: with(func(*store.Task) {}), nilSeal: true, wantErr: "no seal function"},
		{name: "seal changes seq", tk: with(func(*store.Task) {}), seal: func(tk *store.Task) error {
			tk.Seq = 77
			return nil
		}, wantErr: "seal changed the task's id, agent, incident or seq"},
		{name: "seal breaks state", tk: with(func(*store.Task) {}), seal: func(tk *store.Task) error {
			tk.State = "signed"
			return nil
		}, wantErr: `after seal: task "new": unknown state "signed"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sl := tt.seal
			if sl == nil && !tt.nilSeal {
				sl = seal
			}
			_, err := s.CreateTask(tt.tk, sl)
			require.Error(t, err)
			if tt.wantIs != nil {
				require.ErrorIs(t, err, tt.wantIs)
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
	seq, err := s.TaskSeq("a1")
	require.NoError(t, err)
	require.Equal(t, uint64(1), seq, "no refusal consumed a seq")
	list, err := s.ListTasks(store.TaskFilter{})
	require.NoError(t, err)
	require.Equal(t, []string{"t1"}, taskIDs(list))
	require.NoError(t, s.Verify())
}

func TestConcurrentCreateTask(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	agents := []string{"a1", "a2", "a3"}
	for _, a := range agents {
		require.NoError(t, s.CreateIncident(incident("inc-"+a, a, "web", t0)))
	}
	const workers, perWorker = 16, 20
	var wg sync.WaitGroup
	seqs := make([][]uint64, len(agents))
	var mu sync.Mutex
	errs := make(chan error, workers*perWorker)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				ai := (w + i) % len(agents)
				a := agents[ai]
				got, err := s.CreateTask(task(fmt.Sprintf("t-%d-%d", w, i), "inc-"+a, a, t0), seal)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				seqs[ai] = append(seqs[ai], got.Seq)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	total := 0
	for ai, a := range agents {
		got := slices.Sorted(slices.Values(seqs[ai]))
		want := make([]uint64, len(got))
		for i := range want {
			want[i] = uint64(i + 1)
		}
		require.Equal(t, want, got, "agent %s: unique and consecutive", a)
		last, err := s.TaskSeq(a)
		require.NoError(t, err)
		require.Equal(t, uint64(len(got)), last)
		total += len(got)
	}
	require.Equal(t, workers*perWorker, total)
	require.NoError(t, s.Verify())
}

func TestUpdateTask(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))
	require.NoError(t, s.CreateIncident(incident("i2", "a1", "disk", t0)))
	createTask(t, s, task("t1", "i1", "a1", t0))
	createTask(t, s, task("t2", "i2", "a1", t0))

	for _, st := range []string{store.TaskSent, store.TaskRunning} {
		require.NoError(t, s.UpdateTask("t1", setTaskState(st)))
	}
	require.NoError(t, s.UpdateTask("t1", func(tk *store.Task) error {
		tk.State = store.TaskSucceeded
		tk.FinishedAt = t0.Add(time.Minute)
		tk.Output = "restarted nginx.service"
		return nil
	}))
	got, err := s.GetTask("t1")
	require.NoError(t, err)
	require.Equal(t, store.TaskSucceeded, got.State)
	require.Equal(t, "restarted nginx.service", got.Output)
	require.True(t, got.FinishedAt.Equal(t0.Add(time.Minute)))

	// Late or replayed reports of a finished task are refused.
	for _, st := range []string{store.TaskPending, store.TaskSent, store.TaskRunning} {
		err := s.UpdateTask("t1", setTaskState(st))
		require.ErrorIs(t, err, store.ErrTerminal)
		require.ErrorContains(t, err, `task "t1": it is succeeded and cannot become `+st)
	}
	// Terminal to terminal is allowed (a late success after expiry).
	require.NoError(t, s.UpdateTask("t2", setTaskState(store.TaskExpired)))
	require.NoError(t, s.UpdateTask("t2", setTaskState(store.TaskSucceeded)))

	refusals := []struct {
		name    string
		fn      func(*store.Task)
		wantErr string
	}{
		{name: "id", fn: func(tk *store.Task) { tk.ID = "t9" }, wantErr: "the id cannot change"},
		{name: "agent", fn: func(tk *store.Task) { tk.AgentID = "a2" }, wantErr: "the agent cannot change"},
		{name: "incident", fn: func(tk *store.Task) { tk.IncidentID = "i2" }, wantErr: "the incident cannot change"},
		{name: "seq", fn: func(tk *store.Task) { tk.Seq++ }, wantErr: "the seq cannot change (from 1 to 2)"},
		{name: "unknown state", fn: func(tk *store.Task) { tk.State = "ok" }, wantErr: `unknown state "ok"`},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			err := s.UpdateTask("t1", func(tk *store.Task) error {
				tk.Output = "changed"
				tt.fn(tk)
				return nil
			})
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
	after, err := s.GetTask("t1")
	require.NoError(t, err)
	require.Equal(t, "restarted nginx.service", after.Output, "nothing written by refused updates")

	boom := errors.New("boom")
	require.Equal(t, boom, s.UpdateTask("t1", func(*store.Task) error { return boom }))
	require.ErrorIs(t, s.UpdateTask("nope", setTaskState(store.TaskSent)), store.ErrNotFound)
	require.NoError(t, s.Verify())
}

func TestListTasks(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))
	require.NoError(t, s.CreateIncident(incident("i2", "a2", "web", t0)))
	require.NoError(t, s.CreateIncident(incident("i3", "a1", "disk", t0)))
	require.NoError(t, s.CreateIncident(incident("i10", "a10", "web", t0)))
	fixtures := []struct {
		id, incident, agent string
		second              int
		state               string
	}{
		{"t1", "i1", "a1", 1, store.TaskFailed},
		{"t2", "i2", "a2", 2, store.TaskSucceeded},
		{"t3", "i1", "a1", 3, store.TaskRunning},
		{"t4", "i3", "a1", 4, store.TaskPending},
		{"t5", "i10", "a10", 5, store.TaskSent},
		{"t6", "i1", "a1", 3, store.TaskExpired}, // same time as t3, higher seq
	}
	for _, f := range fixtures {
		createTask(t, s, task(f.id, f.incident, f.agent, t0.Add(time.Duration(f.second)*time.Second)))
		if f.state != store.TaskPending {
			require.NoError(t, s.UpdateTask(f.id, setTaskState(f.state)))
		}
	}
	tests := []struct {
		name   string
		filter store.TaskFilter
		want   []string
	}{
		{name: "all", want: []string{"t5", "t4", "t6", "t3", "t2", "t1"}},
		{name: "incident", filter: store.TaskFilter{IncidentID: "i1"}, want: []string{"t6", "t3", "t1"}},
		{name: "incident is not a prefix", filter: store.TaskFilter{IncidentID: "i"}, want: []string{}},
		{name: "agent", filter: store.TaskFilter{AgentID: "a1"}, want: []string{"t4", "t6", "t3", "t1"}},
		{name: "agent and incident", filter: store.TaskFilter{AgentID: "a1", IncidentID: "i3"}, want: []string{"t4"}},
		{name: "agent of another incident", filter: store.TaskFilter{AgentID: "a2", IncidentID: "i1"}, want: []string{}},
		{name: "active states", filter: store.TaskFilter{States: []string{store.TaskPending, store.TaskSent, store.TaskRunning}}, want: []string{"t5", "t4", "t3"}},
		{name: "one active state", filter: store.TaskFilter{States: []string{store.TaskSent}}, want: []string{"t5"}},
		{name: "terminal states", filter: store.TaskFilter{States: []string{store.TaskFailed, store.TaskExpired}}, want: []string{"t6", "t1"}},
		{name: "mixed states", filter: store.TaskFilter{States: []string{store.TaskRunning, store.TaskSucceeded}}, want: []string{"t3", "t2"}},
		{name: "agent and states", filter: store.TaskFilter{AgentID: "a1", States: []string{store.TaskRunning, store.TaskPending}}, want: []string{"t4", "t3"}},
		{name: "incident and states", filter: store.TaskFilter{IncidentID: "i1", States: []string{store.TaskExpired}}, want: []string{"t6"}},
		{name: "unknown agent", filter: store.TaskFilter{AgentID: "a"}, want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.ListTasks(tt.filter)
			require.NoError(t, err)
			require.Equal(t, tt.want, taskIDs(got))
		})
	}
}

func TestRemediationReopenKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tend.db")
	s, err := Open(path, Options{})
	require.NoError(t, err)
	require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))
	require.NoError(t, s.CreateIncident(incident("i2", "a2", "web", t0.Add(time.Second))))
	for i := range 3 {
		createTask(t, s, task(fmt.Sprintf("t%d", i), "i1", "a1", t0.Add(time.Duration(i)*time.Second)))
	}
	// A failed seal just before closing consumes nothing.
	_, err = s.CreateTask(task("lost", "i1", "a1", t0), func(*store.Task) error { return errors.New("no") })
	require.Error(t, err)
	require.NoError(t, s.UpdateTask("t0", setTaskState(store.TaskSucceeded)))
	require.NoError(t, s.UpdateIncident("i2", setIncidentState(store.IncidentResolved)))
	beforeInc, err := s.ListIncidents(store.IncidentFilter{})
	require.NoError(t, err)
	beforeTasks, err := s.ListTasks(store.TaskFilter{})
	require.NoError(t, err)
	require.NoError(t, s.Close())

	s = testStoreAt(t, path, Options{})
	require.NoError(t, s.Verify())
	seq, err := s.TaskSeq("a1")
	require.NoError(t, err)
	require.Equal(t, uint64(3), seq)
	got := createTask(t, s, task("t3", "i1", "a1", t0.Add(time.Minute)))
	require.Equal(t, uint64(4), got.Seq, "seq continues after reopen")

	afterInc, err := s.ListIncidents(store.IncidentFilter{})
	require.NoError(t, err)
	require.Equal(t, incidentIDs(beforeInc), incidentIDs(afterInc))
	for i := range beforeInc {
		require.Equal(t, beforeInc[i].State, afterInc[i].State)
		require.Len(t, afterInc[i].Timeline, len(beforeInc[i].Timeline))
	}
	afterTasks, err := s.ListTasks(store.TaskFilter{})
	require.NoError(t, err)
	require.Equal(t, append([]string{"t3"}, taskIDs(beforeTasks)...), taskIDs(afterTasks))
	for i, tk := range beforeTasks {
		require.Equal(t, tk.Envelope, afterTasks[i+1].Envelope)
		require.Equal(t, tk.State, afterTasks[i+1].State)
	}
	open, err := s.OpenIncident("a1", "web")
	require.NoError(t, err)
	require.Equal(t, "i1", open.ID)
	_, err = s.OpenIncident("a2", "web")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.NoError(t, s.CreateIncident(incident("i3", "a2", "web", t0.Add(time.Hour))))
	require.NoError(t, s.Verify())
}

// TestNewBucketsJoinExistingV1Files: a file written before incidents and
// tasks existed gets their buckets on open, keeps its data, and stays at
// its version.
func TestNewBucketsJoinExistingV1Files(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tend.db")
	s, err := Open(path, Options{})
	require.NoError(t, err)
	enroll(t, s, "a1", "web-1")
	commit(t, s, store.ResultBatch{AgentID: "a1", Results: results("web", 1, 3)})
	require.NoError(t, s.Close())

	// Make it the file an older binary left: no remediation buckets.
	db, err := bbolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bbolt.Tx) error {
		for _, b := range slices.Concat([]bucket{bucketIncidents, bucketTasks, bucketTaskSeq}, incidentIndexBuckets, taskIndexBuckets) {
			if err := tx.DeleteBucket(b.name); err != nil {
				return err
			}
		}
		return nil
	}))
	require.NoError(t, db.Close())

	s = testStoreAt(t, path, Options{})
	v, err := s.SchemaVersion()
	require.NoError(t, err)
	require.Equal(t, SchemaVersion, v)
	require.NoError(t, s.Verify())
	_, err = s.GetAgent("a1")
	require.NoError(t, err)
	rs, err := s.ListResults("a1", "web", 0)
	require.NoError(t, err)
	require.Len(t, rs, 3)
	require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))
	createTask(t, s, task("t1", "i1", "a1", t0))
	require.NoError(t, s.Verify())
}

func TestVerifyCatchesBrokenRemediationIndexes(t *testing.T) {
	fixture := func(t *testing.T) *Store {
		s := testStore(t, Options{NoSync: true})
		require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))
		require.NoError(t, s.CreateIncident(incident("i2", "a1", "disk", t0)))
		require.NoError(t, s.UpdateIncident("i2", setIncidentState(store.IncidentResolved)))
		createTask(t, s, task("t1", "i1", "a1", t0))
		createTask(t, s, task("t2", "i1", "a1", t0.Add(time.Second)))
		require.NoError(t, s.UpdateTask("t1", setTaskState(store.TaskFailed)))
		require.NoError(t, s.Verify())
		return s
	}
	putJSONRaw := func(b bucket, key string, v any) func(tx *bbolt.Tx) error {
		return func(tx *bbolt.Tx) error { return putJSON(tx.Bucket(b.name), key, v) }
	}
	tests := []struct {
		name    string
		corrupt func(tx *bbolt.Tx) error
		wantErr string
	}{
		{name: "open entry for a resolved incident", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketOpenIncidents.name).Put(joinKey("a1", "disk"), []byte("i2"))
		}, wantErr: `open_incidents: stray key "a1\x00disk" (value "i2")`},
		{name: "open entry names another incident", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketOpenIncidents.name).Put(joinKey("a1", "web"), []byte("i2"))
		}, wantErr: `open_incidents: key "a1\x00web" has value "i2", want "i1"`},
		{name: "open entry missing", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketOpenIncidents.name).Delete(joinKey("a1", "web"))
		}, wantErr: `open_incidents: missing key "a1\x00web" (value "i1")`},
		{name: "two open incidents", corrupt: func(tx *bbolt.Tx) error {
			inc := incident("i3", "a1", "web", t0.Add(time.Hour))
			return putJSON(tx.Bucket(bucketIncidents.name), inc.ID, inc)
		}, wantErr: "incident i1 and incident i3 both have key \"a1\\x00web\" in open_incidents"},
		{name: "time index entry missing", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketIncidentsByTime.name).Delete(timeIDKey(t0, "i1"))
		}, wantErr: "incidents_by_time: missing key"},
		{name: "agent index has a wrong policy", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketIncidentsByAgent.name).Put(append(agentPrefix("a1"), timeIDKey(t0, "i1")...), []byte("dns"))
		}, wantErr: `has value "dns", want "web"`},
		{name: "task agent index points elsewhere", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketTasksByAgent.name).Put(seqKey("a1", 1), []byte("t2"))
		}, wantErr: `tasks_by_agent: key "a1\x00\x00\x00\x00\x00\x00\x00\x00\x01" has value "t2", want "t1"`},
		{name: "stray task incident entry", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketTasksByIncident.name).Put(seqKey("i2", 7), []byte("t7"))
		}, wantErr: "tasks_by_incident: stray key"},
		{name: "finished task still active", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketActiveTasks.name).Put(timeIDKey(t0, "t1"), []byte("a1"))
		}, wantErr: "active_tasks: stray key"},
		{name: "task seq behind the tasks", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketTaskSeq.name).Put([]byte("a1"), u64(1))
		}, wantErr: `agent "a1": task_seq is 1 but it has a task with seq 2`},
		{name: "corrupt task seq", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketTaskSeq.name).Put([]byte("a1"), []byte{1})
		}, wantErr: `task seq of agent "a1": 1 bytes, want 8`},
		{name: "task of a missing incident", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketIncidents.name).Delete([]byte("i1"))
		}, wantErr: `task "t1": incident "i1" is missing`},
		{name: "task stored under another id", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketTasks.name).Put([]byte("t9"), tx.Bucket(bucketTasks.name).Get([]byte("t2")))
		}, wantErr: `task stored under "t9" has id "t2"`},
		{name: "incident that does not decode", corrupt: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketIncidents.name).Put([]byte("i2"), []byte("{"))
		}, wantErr: `decode incident "i2"`},
		{name: "task with an unknown state", corrupt: putJSONRaw(bucketTasks, "t1", func() store.Task {
			tk := task("t1", "i1", "a1", t0)
			tk.Seq, tk.State = 1, "weird"
			return tk
		}()), wantErr: `task "t1": unknown state "weird"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := fixture(t)
			require.NoError(t, s.db.Update(tt.corrupt))
			err := s.Verify()
			require.Error(t, err)
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestAwaitingApprovalThenSealTask(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	require.NoError(t, s.CreateIncident(incident("i1", "a1", "web", t0)))
	require.NoError(t, s.CreateIncident(incident("i2", "a1", "disk", t0)))

	// Two tasks of one agent await approval at once: no seq, no envelope,
	// and their index keys do not collide.
	for i, id := range []string{"t1", "t2"} {
		in := task(id, []string{"i1", "i2"}[i], "a1", t0.Add(time.Duration(i)*time.Second))
		in.State = store.TaskAwaitingApproval
		got, err := s.CreateTask(in, nil)
		require.NoError(t, err)
		require.Zero(t, got.Seq)
		require.Empty(t, got.Envelope)
	}
	got := createTask(t, s, task("t3", "i1", "a1", t0.Add(2*time.Second)))
	require.Equal(t, uint64(1), got.Seq, "a task that needs no approval takes the next seq meanwhile")
	list, err := s.ListTasks(store.TaskFilter{AgentID: "a1"})
	require.NoError(t, err)
	require.Equal(t, []string{"t3", "t2", "t1"}, taskIDs(list))
	require.NoError(t, s.Verify())

	// Approval seals it with the next seq, in one transaction.
	sealed, err := s.SealTask("t2", func(tk *store.Task) error {
		tk.State = store.TaskPending
		tk.ApprovedBy = "alice"
		return seal(tk)
	})
	require.NoError(t, err)
	require.Equal(t, uint64(2), sealed.Seq)
	require.Equal(t, "signed t2 seq 2", string(sealed.Envelope))
	stored, err := s.GetTask("t2")
	require.NoError(t, err)
	require.Equal(t, "alice", stored.ApprovedBy)
	require.Equal(t, uint64(2), stored.Seq)

	// Sealing twice, or a task that never awaited approval: ErrState.
	_, err = s.SealTask("t2", seal)
	require.ErrorIs(t, err, store.ErrState)
	_, err = s.SealTask("t3", seal)
	require.ErrorIs(t, err, store.ErrState)
	_, err = s.SealTask("nope", seal)
	require.ErrorIs(t, err, store.ErrNotFound)

	// A seal that fails, or leaves the task unsigned, writes nothing and
	// consumes no seq.
	_, err = s.SealTask("t1", func(*store.Task) error { return errors.New("no key") })
	require.ErrorContains(t, err, "no key")
	_, err = s.SealTask("t1", func(tk *store.Task) error { tk.State = store.TaskPending; return nil })
	require.ErrorContains(t, err, "unsigned")
	seq, err := s.TaskSeq("a1")
	require.NoError(t, err)
	require.Equal(t, uint64(2), seq)

	// A closed incident's task cannot be sealed.
	require.NoError(t, s.UpdateIncident("i1", setIncidentState(store.IncidentEscalated)))
	_, err = s.SealTask("t1", seal)
	require.ErrorIs(t, err, store.ErrTerminal)
	require.NoError(t, s.Verify())
}

func TestPolicyState(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "cp.db"), Options{NoSync: true})
	require.NoError(t, err)
	_, err = s.GetPolicyState("web")
	require.ErrorIs(t, err, store.ErrNotFound)
	ps := store.PolicyState{Policy: "web", Failures: []time.Time{t0}, BreakerOpen: true, BreakerOpenedAt: t0, BreakerReason: "5 failed attempts in 1h"}
	require.NoError(t, s.PutPolicyState(ps))
	require.NoError(t, s.PutPolicyState(store.PolicyState{Policy: "disk", Correlated: true}))
	require.Error(t, s.PutPolicyState(store.PolicyState{}), "a policy name is required")
	require.NoError(t, s.Close())

	s, err = Open(filepath.Join(dir, "cp.db"), Options{NoSync: true})
	require.NoError(t, err)
	defer s.Close()
	got, err := s.GetPolicyState("web")
	require.NoError(t, err)
	require.True(t, got.BreakerOpen)
	require.True(t, got.BreakerOpenedAt.Equal(t0))
	all, err := s.ListPolicyStates()
	require.NoError(t, err)
	require.Len(t, all, 2)
	require.Equal(t, "disk", all[0].Policy)
}

// One decision of the remediation loop is one transaction: the incident,
// its signed task and their events are stored together, each write seeing
// the ones before it, or none of them.
func TestUpdateRemediationIsOneTransaction(t *testing.T) {
	s := testStore(t, Options{NoSync: true})
	enroll(t, s, "a1", "web-1")

	var stored store.Task
	require.NoError(t, s.UpdateRemediation(func(tx store.RemediationTx) error {
		if err := tx.CreateIncident(incident("inc-1", "a1", "web", t0)); err != nil {
			return err
		}
		var err error
		stored, err = tx.CreateTask(task("task-1", "inc-1", "a1", t0), seal)
		if err != nil {
			return err
		}
		if err := tx.UpdateIncident("inc-1", func(inc *store.Incident) error {
			inc.State = store.IncidentRemediating
			inc.Timeline = append(inc.Timeline, store.Event{At: t0, Kind: "decided", TaskID: stored.ID})
			return nil
		}); err != nil {
			return err
		}
		if err := tx.UpdateTask("task-1", setTaskState(store.TaskSent)); err != nil {
			return err
		}
		return tx.PutPolicyState(store.PolicyState{Policy: "web", Failures: []time.Time{t0}})
	}))
	require.Equal(t, uint64(1), stored.Seq)
	inc, err := s.GetIncident("inc-1")
	require.NoError(t, err)
	require.Equal(t, store.IncidentRemediating, inc.State)
	require.Equal(t, []string{"triggered", ""}, []string{inc.Timeline[0].Message, inc.Timeline[1].Message})
	got, err := s.GetTask("task-1")
	require.NoError(t, err)
	require.Equal(t, store.TaskSent, got.State)
	require.Equal(t, "signed task-1 seq 1", string(got.Envelope))
	ps, err := s.GetPolicyState("web")
	require.NoError(t, err)
	require.Len(t, ps.Failures, 1)

	// An error anywhere stores nothing: no incident, no task, no seq used.
	boom := errors.New("boom")
	err = s.UpdateRemediation(func(tx store.RemediationTx) error {
		require.NoError(t, tx.UpdateIncident("inc-1", setIncidentState(store.IncidentResolved)))
		require.NoError(t, tx.CreateIncident(incident("inc-2", "a1", "disk", t0)))
		_, err := tx.CreateTask(task("task-2", "inc-2", "a1", t0), seal)
		require.NoError(t, err)
		return boom
	})
	require.ErrorIs(t, err, boom)
	inc, err = s.GetIncident("inc-1")
	require.NoError(t, err)
	require.Equal(t, store.IncidentRemediating, inc.State)
	_, err = s.GetIncident("inc-2")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = s.GetTask("task-2")
	require.ErrorIs(t, err, store.ErrNotFound)
	seq, err := s.TaskSeq("a1")
	require.NoError(t, err)
	require.Equal(t, uint64(1), seq)

	// The transaction's methods check as the store's do.
	err = s.UpdateRemediation(func(tx store.RemediationTx) error {
		return tx.CreateIncident(incident("inc-3", "a1", "web", t0))
	})
	require.ErrorIs(t, err, store.ErrExists)
	err = s.UpdateRemediation(func(tx store.RemediationTx) error {
		_, err := tx.SealTask("task-1", seal)
		return err
	})
	require.ErrorIs(t, err, store.ErrState)
	err = s.UpdateRemediation(func(tx store.RemediationTx) error {
		return tx.UpdateTask("task-1", func(tk *store.Task) error { tk.Seq = 7; return nil })
	})
	require.ErrorContains(t, err, "seq cannot change")
	require.NoError(t, s.Verify())
}
