package bolt

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"tend.dev/tend/controlplane/store"
)

// Incidents and tasks (store.RemediationStore). The records are JSON; the
// indexes (schema.go) are derived from them by incidentIndex and taskIndex,
// and every write goes through putIncident or putTask, which move the index
// entries in the same transaction.

var (
	incidentStates = []string{
		store.IncidentOpen, store.IncidentRemediating, store.IncidentVerifying,
		store.IncidentResolved, store.IncidentEscalated, store.IncidentSuppressed,
		store.IncidentFlapping,
	}
	taskStates = []string{
		store.TaskAwaitingApproval, store.TaskPending, store.TaskSent, store.TaskRunning, store.TaskSucceeded,
		store.TaskFailed, store.TaskExpired, store.TaskRejected,
	}
)

// validKeyPart refuses an empty value or one with a NUL byte (it goes into
// composite keys).
func validKeyPart(what, v string) error {
	switch {
	case v == "":
		return fmt.Errorf("empty %s", what)
	case strings.IndexByte(v, sep) >= 0:
		return fmt.Errorf("%s %q contains a NUL byte", what, v)
	}
	return nil
}

func validIncident(inc store.Incident) error {
	if err := validKeyPart("incident id", inc.ID); err != nil {
		return err
	}
	if err := validAgentID(inc.AgentID); err != nil {
		return fmt.Errorf("incident %q: %w", inc.ID, err)
	}
	if err := validKeyPart("policy", inc.Policy); err != nil {
		return fmt.Errorf("incident %q: %w", inc.ID, err)
	}
	if !slices.Contains(incidentStates, inc.State) {
		return fmt.Errorf("incident %q: unknown state %q (want one of %s)", inc.ID, inc.State, strings.Join(incidentStates, ", "))
	}
	return nil
}

func validTask(tk store.Task) error {
	if err := validKeyPart("task id", tk.ID); err != nil {
		return err
	}
	if err := validKeyPart("incident id", tk.IncidentID); err != nil {
		return fmt.Errorf("task %q: %w", tk.ID, err)
	}
	if err := validAgentID(tk.AgentID); err != nil {
		return fmt.Errorf("task %q: %w", tk.ID, err)
	}
	if tk.Action == "" {
		return fmt.Errorf("task %q: empty action", tk.ID)
	}
	if !slices.Contains(taskStates, tk.State) {
		return fmt.Errorf("task %q: unknown state %q (want one of %s)", tk.ID, tk.State, strings.Join(taskStates, ", "))
	}
	if len(tk.Params) > 0 && !json.Valid(tk.Params) {
		return fmt.Errorf("task %q: params are not valid JSON", tk.ID)
	}
	return nil
}

// CreateIncident implements store.RemediationStore. A zero OpenedAt is set
// to now and a zero UpdatedAt to OpenedAt. It is refused (store.ErrExists)
// while the (agent, policy) has a non-terminal incident, whatever the state
// of the new one, and when the id was used before.
func (s *Store) CreateIncident(inc store.Incident) error {
	return s.update(func(t txn) error { return t.createIncident(inc, s.now) })
}

func (t txn) createIncident(inc store.Incident, now func() time.Time) error {
	if inc.OpenedAt.IsZero() {
		inc.OpenedAt = now()
	}
	if inc.UpdatedAt.IsZero() {
		inc.UpdatedAt = inc.OpenedAt
	}
	if err := validIncident(inc); err != nil {
		return fmt.Errorf("create incident: %w", err)
	}
	if t.incidentExists(inc.ID) {
		return fmt.Errorf("create incident %q: %w (incident ids are never reused)", inc.ID, store.ErrExists)
	}
	if open := t.openIncidentID(inc.AgentID, inc.Policy); open != "" {
		return fmt.Errorf("create incident %q: agent %s already has open incident %s for policy %q (update it, or close it first): %w",
			inc.ID, inc.AgentID, open, inc.Policy, store.ErrExists)
	}
	return t.putIncident(nil, inc)
}

// GetIncident implements store.RemediationStore.
func (s *Store) GetIncident(id string) (store.Incident, error) {
	var inc store.Incident
	err := s.view(func(t txn) error {
		var ok bool
		var err error
		inc, ok, err = t.incident(id)
		if err == nil && !ok {
			err = fmt.Errorf("incident %q: %w", id, store.ErrNotFound)
		}
		return err
	})
	return inc, err
}

// OpenIncident implements store.RemediationStore.
func (s *Store) OpenIncident(agentID, policy string) (store.Incident, error) {
	var inc store.Incident
	err := s.view(func(t txn) error {
		id := t.openIncidentID(agentID, policy)
		if id == "" {
			return fmt.Errorf("open incident of agent %q for policy %q: %w", agentID, policy, store.ErrNotFound)
		}
		var ok bool
		var err error
		inc, ok, err = t.incident(id)
		if err == nil && !ok {
			err = fmt.Errorf("open incident of agent %q for policy %q: the index names incident %q, which is missing: the store is inconsistent (see Verify)",
				agentID, policy, id)
		}
		return err
	})
	return inc, err
}

// UpdateIncident implements store.RemediationStore. A terminal incident may
// still change otherwise (a note on its timeline, resolved after escalated).
func (s *Store) UpdateIncident(id string, fn func(*store.Incident) error) error {
	return s.update(func(t txn) error { return t.updateIncident(id, fn) })
}

func (t txn) updateIncident(id string, fn func(*store.Incident) error) error {
	old, ok, err := t.incident(id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("update incident %q: %w", id, store.ErrNotFound)
	}
	// A second decode: fn gets its own copy (timeline included) and old
	// stays as stored, for the index entries to move.
	nu, _, err := t.incident(id)
	if err != nil {
		return err
	}
	if err := fn(&nu); err != nil {
		return err
	}
	switch {
	case nu.ID != old.ID:
		return fmt.Errorf("update incident %q: the id cannot change (to %q)", id, nu.ID)
	case nu.AgentID != old.AgentID:
		return fmt.Errorf("update incident %q: the agent cannot change (from %q to %q)", id, old.AgentID, nu.AgentID)
	case nu.Policy != old.Policy:
		return fmt.Errorf("update incident %q: the policy cannot change (from %q to %q)", id, old.Policy, nu.Policy)
	}
	if err := validIncident(nu); err != nil {
		return fmt.Errorf("update incident: %w", err)
	}
	if store.IncidentTerminal(old.State) && !store.IncidentTerminal(nu.State) {
		return fmt.Errorf("update incident %q: it is %s and cannot become %s (a new trigger opens a new incident): %w",
			id, old.State, nu.State, store.ErrTerminal)
	}
	return t.putIncident(&old, nu)
}

// ListIncidents implements store.RemediationStore: newest OpenedAt first,
// then by id, descending. OpenOnly reads the open index, AgentID the
// per-agent index; otherwise the time index is scanned.
func (s *Store) ListIncidents(f store.IncidentFilter) ([]store.Incident, error) {
	var out []store.Incident
	err := s.view(func(t txn) error {
		add := func(id string) error {
			inc, ok, err := t.incident(id)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("an index names incident %q, which is missing: the store is inconsistent (see Verify)", id)
			}
			if (f.AgentID == "" || inc.AgentID == f.AgentID) &&
				(f.Policy == "" || inc.Policy == f.Policy) &&
				(!f.OpenOnly || !store.IncidentTerminal(inc.State)) {
				out = append(out, inc)
			}
			return nil
		}
		switch {
		case f.OpenOnly && f.AgentID != "" && f.Policy != "":
			if id := t.openIncidentID(f.AgentID, f.Policy); id != "" {
				return add(id)
			}
			return nil
		case f.OpenOnly:
			var prefix []byte
			if f.AgentID != "" {
				prefix = agentPrefix(f.AgentID)
			}
			return t.scan(bucketOpenIncidents, prefix, false, func(_, v []byte) (bool, error) {
				return true, add(string(v))
			})
		case f.AgentID != "":
			prefix := agentPrefix(f.AgentID)
			return t.scan(bucketIncidentsByAgent, prefix, true, func(k, v []byte) (bool, error) {
				if f.Policy != "" && string(v) != f.Policy {
					return true, nil
				}
				return true, add(string(k[min(len(k), len(prefix)+8):]))
			})
		default:
			return t.scan(bucketIncidentsByTime, nil, true, func(k, v []byte) (bool, error) {
				if f.Policy != "" {
					if _, policy, _ := splitCheckKey(v); policy != f.Policy {
						return true, nil
					}
				}
				return true, add(string(k[min(len(k), 8):]))
			})
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list incidents: %w", err)
	}
	slices.SortFunc(out, func(a, b store.Incident) int {
		if c := b.OpenedAt.Compare(a.OpenedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return out, nil
}

// CreateTask implements store.RemediationStore. The Seq the caller set is
// ignored; a zero CreatedAt is set to now before seal runs. ID, IncidentID,
// AgentID, Action and a known State are required, Params must be JSON if
// set, and seal may not change ID, AgentID, IncidentID or Seq. A nil seal is
// refused: every task is signed.
func (s *Store) CreateTask(tk store.Task, seal func(*store.Task) error) (store.Task, error) {
	var out store.Task
	err := s.update(func(t txn) (err error) {
		out, err = t.createTask(tk, seal, s.now)
		return err
	})
	if err != nil {
		return store.Task{}, err
	}
	return out, nil
}

func (t txn) createTask(tk store.Task, seal func(*store.Task) error, now func() time.Time) (store.Task, error) {
	awaiting := tk.State == store.TaskAwaitingApproval
	if seal == nil && !awaiting {
		return store.Task{}, fmt.Errorf("create task %q: no seal function", tk.ID)
	}
	if tk.CreatedAt.IsZero() {
		tk.CreatedAt = now()
	}
	tk.Seq = 0
	if err := validTask(tk); err != nil {
		return store.Task{}, fmt.Errorf("create task: %w", err)
	}
	if t.taskExists(tk.ID) {
		return store.Task{}, fmt.Errorf("create task %q: %w (task ids are never reused)", tk.ID, store.ErrExists)
	}
	inc, ok, err := t.incident(tk.IncidentID)
	if err != nil {
		return store.Task{}, err
	}
	switch {
	case !ok:
		return store.Task{}, fmt.Errorf("create task %q: incident %q: %w", tk.ID, tk.IncidentID, store.ErrNotFound)
	case inc.AgentID != tk.AgentID:
		return store.Task{}, fmt.Errorf("create task %q: it is for agent %s but incident %s is of agent %s", tk.ID, tk.AgentID, inc.ID, inc.AgentID)
	case store.IncidentTerminal(inc.State):
		return store.Task{}, fmt.Errorf("create task %q: incident %s is %s: %w", tk.ID, inc.ID, inc.State, store.ErrTerminal)
	}
	if awaiting {
		tk.Envelope = nil
		err = t.putTask(nil, tk)
	} else {
		err = t.sealTask(nil, &tk, seal, "create task")
	}
	if err != nil {
		return store.Task{}, err
	}
	return tk, nil
}

// sealTask assigns tk the agent's next seq, calls seal and stores it (old
// is the stored record being replaced, nil for a new task).
func (t txn) sealTask(old *store.Task, tk *store.Task, seal func(*store.Task) error, op string) error {
	last, err := t.taskSeq(tk.AgentID)
	if err != nil {
		return err
	}
	if last == math.MaxUint64 {
		return fmt.Errorf("%s %q: agent %s has used every task sequence number", op, tk.ID, tk.AgentID)
	}
	tk.Seq = last + 1
	want := *tk
	if err := seal(tk); err != nil {
		return fmt.Errorf("%s %q: seal: %w", op, tk.ID, err)
	}
	if tk.ID != want.ID || tk.AgentID != want.AgentID || tk.IncidentID != want.IncidentID || tk.Seq != want.Seq {
		return fmt.Errorf("%s %q: seal changed the task's id, agent, incident or seq", op, want.ID)
	}
	if err := validTask(*tk); err != nil {
		return fmt.Errorf("%s: after seal: %w", op, err)
	}
	if tk.State == store.TaskAwaitingApproval || len(tk.Envelope) == 0 {
		return fmt.Errorf("%s %q: seal left the task unsigned or awaiting approval", op, tk.ID)
	}
	if err := t.putTaskSeq(tk.AgentID, tk.Seq); err != nil {
		return err
	}
	return t.putTask(old, *tk)
}

// SealTask implements store.RemediationStore.
func (s *Store) SealTask(id string, seal func(*store.Task) error) (store.Task, error) {
	var tk store.Task
	err := s.update(func(t txn) (err error) {
		tk, err = t.sealTaskByID(id, seal)
		return err
	})
	if err != nil {
		return store.Task{}, err
	}
	return tk, nil
}

func (t txn) sealTaskByID(id string, seal func(*store.Task) error) (store.Task, error) {
	if seal == nil {
		return store.Task{}, fmt.Errorf("seal task %q: no seal function", id)
	}
	old, ok, err := t.task(id)
	if err != nil {
		return store.Task{}, err
	}
	if !ok {
		return store.Task{}, fmt.Errorf("seal task %q: %w", id, store.ErrNotFound)
	}
	if old.State != store.TaskAwaitingApproval {
		return store.Task{}, fmt.Errorf("seal task %q: it is %s, not %s: %w", id, old.State, store.TaskAwaitingApproval, store.ErrState)
	}
	inc, ok, err := t.incident(old.IncidentID)
	if err != nil {
		return store.Task{}, err
	}
	if !ok || store.IncidentTerminal(inc.State) {
		return store.Task{}, fmt.Errorf("seal task %q: its incident %s is closed: %w", id, old.IncidentID, store.ErrTerminal)
	}
	tk := old
	if err := t.sealTask(&old, &tk, seal, "seal task"); err != nil {
		return store.Task{}, err
	}
	return tk, nil
}

// UpdateRemediation implements store.RemediationStore.
func (s *Store) UpdateRemediation(fn func(tx store.RemediationTx) error) error {
	return s.update(func(t txn) error { return fn(remediationTx{t: t, now: s.now}) })
}

// remediationTx is store.RemediationTx on one bbolt write transaction: the
// same checks as the Store's methods, which run each in a transaction of
// its own.
type remediationTx struct {
	t   txn
	now func() time.Time
}

func (x remediationTx) CreateIncident(inc store.Incident) error {
	return x.t.createIncident(inc, x.now)
}

func (x remediationTx) UpdateIncident(id string, fn func(*store.Incident) error) error {
	return x.t.updateIncident(id, fn)
}

func (x remediationTx) CreateTask(tk store.Task, seal func(*store.Task) error) (store.Task, error) {
	return x.t.createTask(tk, seal, x.now)
}

func (x remediationTx) SealTask(id string, seal func(*store.Task) error) (store.Task, error) {
	return x.t.sealTaskByID(id, seal)
}

func (x remediationTx) UpdateTask(id string, fn func(*store.Task) error) error {
	return x.t.updateTask(id, fn)
}

func (x remediationTx) PutPolicyState(ps store.PolicyState) error {
	return x.t.putPolicyState(ps)
}

// GetPolicyState implements store.RemediationStore.
func (s *Store) GetPolicyState(policy string) (store.PolicyState, error) {
	var ps store.PolicyState
	err := s.view(func(t txn) error {
		var ok bool
		var err error
		ps, ok, err = getJSON[store.PolicyState](t.bucket(bucketPolicyState), policy)
		if err == nil && !ok {
			err = fmt.Errorf("policy state %q: %w", policy, store.ErrNotFound)
		}
		return err
	})
	return ps, err
}

// PutPolicyState implements store.RemediationStore.
func (s *Store) PutPolicyState(ps store.PolicyState) error {
	return s.update(func(t txn) error { return t.putPolicyState(ps) })
}

func (t txn) putPolicyState(ps store.PolicyState) error {
	if err := validKeyPart("policy", ps.Policy); err != nil {
		return fmt.Errorf("put policy state: %w", err)
	}
	b, err := json.Marshal(ps)
	if err != nil {
		return err
	}
	return t.bucket(bucketPolicyState).Put([]byte(ps.Policy), b)
}

// ListPolicyStates implements store.RemediationStore, by policy name.
func (s *Store) ListPolicyStates() ([]store.PolicyState, error) {
	var out []store.PolicyState
	err := s.view(func(t txn) error {
		return t.bucket(bucketPolicyState).ForEach(func(k, v []byte) error {
			var ps store.PolicyState
			if err := json.Unmarshal(v, &ps); err != nil {
				return fmt.Errorf("policy state %q: %w", k, err)
			}
			out = append(out, ps)
			return nil
		})
	})
	return out, err
}

// GetTask implements store.RemediationStore.
func (s *Store) GetTask(id string) (store.Task, error) {
	var tk store.Task
	err := s.view(func(t txn) error {
		var ok bool
		var err error
		tk, ok, err = t.task(id)
		if err == nil && !ok {
			err = fmt.Errorf("task %q: %w", id, store.ErrNotFound)
		}
		return err
	})
	return tk, err
}

// UpdateTask implements store.RemediationStore. A terminal task may move to
// another terminal state (an agent's late report of success after the
// control plane gave up on it as expired) and change otherwise.
func (s *Store) UpdateTask(id string, fn func(*store.Task) error) error {
	return s.update(func(t txn) error { return t.updateTask(id, fn) })
}

func (t txn) updateTask(id string, fn func(*store.Task) error) error {
	old, ok, err := t.task(id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("update task %q: %w", id, store.ErrNotFound)
	}
	nu, _, err := t.task(id)
	if err != nil {
		return err
	}
	if err := fn(&nu); err != nil {
		return err
	}
	switch {
	case nu.ID != old.ID:
		return fmt.Errorf("update task %q: the id cannot change (to %q)", id, nu.ID)
	case nu.AgentID != old.AgentID:
		return fmt.Errorf("update task %q: the agent cannot change (from %q to %q)", id, old.AgentID, nu.AgentID)
	case nu.IncidentID != old.IncidentID:
		return fmt.Errorf("update task %q: the incident cannot change (from %q to %q)", id, old.IncidentID, nu.IncidentID)
	case nu.Seq != old.Seq:
		return fmt.Errorf("update task %q: the seq cannot change (from %d to %d)", id, old.Seq, nu.Seq)
	}
	if err := validTask(nu); err != nil {
		return fmt.Errorf("update task: %w", err)
	}
	if store.TaskTerminal(old.State) && !store.TaskTerminal(nu.State) {
		return fmt.Errorf("update task %q: it is %s and cannot become %s: %w", id, old.State, nu.State, store.ErrTerminal)
	}
	return t.putTask(&old, nu)
}

// ListTasks implements store.RemediationStore: newest CreatedAt first, then
// by agent id, seq descending, id descending. IncidentID and AgentID read
// their indexes; States that are all non-terminal read the active-task
// index; otherwise the time index is scanned.
func (s *Store) ListTasks(f store.TaskFilter) ([]store.Task, error) {
	var out []store.Task
	err := s.view(func(t txn) error {
		add := func(id string) error {
			tk, ok, err := t.task(id)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("an index names task %q, which is missing: the store is inconsistent (see Verify)", id)
			}
			if (f.AgentID == "" || tk.AgentID == f.AgentID) &&
				(f.IncidentID == "" || tk.IncidentID == f.IncidentID) &&
				(len(f.States) == 0 || slices.Contains(f.States, tk.State)) {
				out = append(out, tk)
			}
			return nil
		}
		byValue := func(_, v []byte) (bool, error) { return true, add(string(v)) }
		byTimeKey := func(k, _ []byte) (bool, error) { return true, add(string(k[min(len(k), 8):])) }
		switch {
		case f.IncidentID != "":
			return t.scan(bucketTasksByIncident, append([]byte(f.IncidentID), sep), true, byValue)
		case f.AgentID != "":
			return t.scan(bucketTasksByAgent, agentPrefix(f.AgentID), true, byValue)
		case len(f.States) > 0 && !slices.ContainsFunc(f.States, store.TaskTerminal):
			return t.scan(bucketActiveTasks, nil, true, byTimeKey)
		default:
			return t.scan(bucketTasksByTime, nil, true, byTimeKey)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	slices.SortFunc(out, func(a, b store.Task) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		if c := strings.Compare(a.AgentID, b.AgentID); c != 0 {
			return c
		}
		if a.Seq != b.Seq {
			if a.Seq > b.Seq {
				return -1
			}
			return 1
		}
		return strings.Compare(b.ID, a.ID)
	})
	return out, nil
}

// TaskSeq implements store.RemediationStore. An agent that never had a task
// (or an unknown one) has 0.
func (s *Store) TaskSeq(agentID string) (uint64, error) {
	var seq uint64
	err := s.view(func(t txn) (err error) {
		seq, err = t.taskSeq(agentID)
		return err
	})
	return seq, err
}

// maxVerifyErrorsPerBucket bounds what Verify reports of one broken index.
const maxVerifyErrorsPerBucket = 10

// verifyRemediation checks incidents and tasks for Verify: every record
// decodes, is valid and is stored under its own id; every task's incident
// exists and is of the task's agent, and its seq is not above the agent's
// task_seq; and every index bucket holds exactly the entries that
// incidentIndex and taskIndex derive from the records (so at most one open
// incident per (agent, policy), and one task per (agent, seq)).
func (t txn) verifyRemediation() []error {
	var errs []error
	want := map[string]map[string]string{}  // bucket → key → value
	owner := map[string]map[string]string{} // bucket → key → record
	for _, b := range slices.Concat(incidentIndexBuckets, taskIndexBuckets) {
		want[string(b.name)] = map[string]string{}
		owner[string(b.name)] = map[string]string{}
	}
	expect := func(record string, es []indexEntry) {
		for _, e := range es {
			b, k := string(e.b.name), string(e.key)
			if prev, dup := owner[b][k]; dup {
				errs = append(errs, fmt.Errorf("%s and %s both have key %q in %s", prev, record, k, b))
				continue
			}
			want[b][k], owner[b][k] = string(e.value), record
		}
	}

	agentOf := map[string]string{} // incident id → agent id
	errs = append(errs, t.bucket(bucketIncidents).ForEach(func(k, v []byte) error {
		var inc store.Incident
		if err := json.Unmarshal(v, &inc); err != nil {
			errs = append(errs, fmt.Errorf("decode incident %q: %w", k, err))
			return nil
		}
		if string(k) != inc.ID {
			errs = append(errs, fmt.Errorf("incident stored under %q has id %q", k, inc.ID))
		}
		if err := validIncident(inc); err != nil {
			errs = append(errs, err)
		}
		agentOf[inc.ID] = inc.AgentID
		expect("incident "+inc.ID, incidentIndex(inc))
		return nil
	}))

	maxSeq := map[string]uint64{}
	errs = append(errs, t.bucket(bucketTasks).ForEach(func(k, v []byte) error {
		var tk store.Task
		if err := json.Unmarshal(v, &tk); err != nil {
			errs = append(errs, fmt.Errorf("decode task %q: %w", k, err))
			return nil
		}
		if string(k) != tk.ID {
			errs = append(errs, fmt.Errorf("task stored under %q has id %q", k, tk.ID))
		}
		if err := validTask(tk); err != nil {
			errs = append(errs, err)
		}
		switch {
		case tk.Seq == 0 && tk.State != store.TaskAwaitingApproval:
			errs = append(errs, fmt.Errorf("task %q has no seq", tk.ID))
		case tk.Seq != 0 && tk.State == store.TaskAwaitingApproval:
			errs = append(errs, fmt.Errorf("task %q awaits approval but has seq %d", tk.ID, tk.Seq))
		}
		switch agent, ok := agentOf[tk.IncidentID]; {
		case !ok:
			errs = append(errs, fmt.Errorf("task %q: incident %q is missing", tk.ID, tk.IncidentID))
		case agent != tk.AgentID:
			errs = append(errs, fmt.Errorf("task %q is for agent %q but its incident %q is of agent %q", tk.ID, tk.AgentID, tk.IncidentID, agent))
		}
		maxSeq[tk.AgentID] = max(maxSeq[tk.AgentID], tk.Seq)
		expect("task "+tk.ID, taskIndex(tk))
		return nil
	}))

	errs = append(errs, t.bucket(bucketTaskSeq).ForEach(func(k, v []byte) error {
		if len(v) != 8 {
			errs = append(errs, fmt.Errorf("task seq of agent %q: %d bytes, want 8", k, len(v)))
		}
		return nil
	}))
	for agent, seq := range maxSeq {
		last, err := t.taskSeq(agent)
		if err != nil {
			continue // reported above
		}
		if last < seq {
			errs = append(errs, fmt.Errorf("agent %q: task_seq is %d but it has a task with seq %d", agent, last, seq))
		}
	}

	for _, b := range slices.Concat(incidentIndexBuckets, taskIndexBuckets) {
		errs = append(errs, t.verifyIndex(b, want[string(b.name)]))
	}
	return errs
}

// verifyIndex compares the index bucket b with the entries it should hold.
func (t txn) verifyIndex(b bucket, want map[string]string) error {
	var errs []error
	more := 0
	report := func(err error) {
		if len(errs) < maxVerifyErrorsPerBucket {
			errs = append(errs, err)
		} else {
			more++
		}
	}
	bk := t.bucket(b)
	_ = bk.ForEach(func(k, v []byte) error {
		w, ok := want[string(k)]
		switch {
		case !ok:
			report(fmt.Errorf("%s: stray key %q (value %q)", b.name, k, v))
		case w != string(v):
			report(fmt.Errorf("%s: key %q has value %q, want %q", b.name, k, v, w))
		}
		return nil
	})
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if bk.Get([]byte(k)) == nil {
			report(fmt.Errorf("%s: missing key %q (value %q)", b.name, k, want[k]))
		}
	}
	if more > 0 {
		errs = append(errs, fmt.Errorf("%s: and %d more errors", b.name, more))
	}
	return errors.Join(errs...)
}
