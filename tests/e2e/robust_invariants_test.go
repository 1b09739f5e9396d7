package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	bbolt "go.etcd.io/bbolt"

	"tend.dev/tend/agent/state"
	"tend.dev/tend/agent/tasks"
	"tend.dev/tend/controlplane/server"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/controlplane/store/bolt"
)

// The invariants of the reliability issue, checked after a fault run once
// every process has stopped, from the two kinds of bbolt file and from the
// side effects on the hosts:
//
//  1. every result an agent produced is stored exactly once, or is still in
//     its outbox, or was dropped by its bounded outbox (and counted);
//  2. every task runs at most once (each run appends a line to the host's
//     runs file);
//  3. no expired task ever runs: a run happens before the task's expiry
//     plus the skew the agent allows, and no task the control plane called
//     expired (or rejected) has a run;
//  4. every incident and every task reached a terminal state;
//  5. the control plane's and every agent's bbolt file pass tx.Check (and
//     the store's own Verify: indexes agree with the records).

// invariantHost is one agent as the checker sees it.
type invariantHost struct {
	Name    string
	DataDir string // the agent's --data-dir (agent.db)
	Runs    string // the runs file its remediation appends to
}

// invariantReport is what the checker found.
type invariantReport struct {
	Results    uint64 // results produced by the agents (each checked)
	Stored     uint64 // ... of which stored by the control plane
	Pending    uint64 // ... still in an outbox when the agents stopped
	Dropped    uint64 // dropped by bounded outboxes
	Tasks      int    // tasks checked
	Runs       int    // task executions seen on the hosts
	Incidents  int
	Resolved   int
	Escalated  int
	TaskStates map[string]int
	Violations []string
	// Notes tell the story of incidents that took more than one attempt
	// or were escalated: not violations, but worth reading.
	Notes       []string
	checkedDBs  int
	agentTaskHW map[string]uint64
}

func (r *invariantReport) violate(format string, args ...any) {
	r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
}

// runLine is one execution recorded on a host.
type runLine struct {
	at     time.Time
	token  string // the nanosecond stamp as written, also echoed in the task's output
	policy string // the policy whose remediation ran ("": any)
}

// robustRunMarker prefixes the line the remediation prints, so the run can
// be matched to the task whose output holds it.
const robustRunMarker = "tend-robust-run "

// checkInvariants checks every invariant. cpDataDir is the control plane's
// data dir; all processes must have stopped.
func checkInvariants(cpDataDir string, hosts []invariantHost) *invariantReport {
	rep := &invariantReport{TaskStates: map[string]int{}, agentTaskHW: map[string]uint64{}}
	tmp, err := os.MkdirTemp("", "tend-invariants-")
	if err != nil {
		rep.violate("temp dir: %v", err)
		return rep
	}
	defer os.RemoveAll(tmp)

	// 5. bbolt consistency, read-only on the files themselves.
	cpDB := filepath.Join(cpDataDir, server.StoreFile)
	rep.checkBolt(cpDB)
	for _, h := range hosts {
		rep.checkBolt(filepath.Join(h.DataDir, "agent.db"))
	}

	// The rest reads copies, so that nothing here can change the evidence.
	cpCopy := filepath.Join(tmp, "tend.db")
	if err := copyFile(cpDB, cpCopy); err != nil {
		rep.violate("copy %s: %v", cpDB, err)
		return rep
	}
	st, err := bolt.Open(cpCopy, bolt.Options{})
	if err != nil {
		rep.violate("open the control plane's store: %v", err)
		return rep
	}
	defer st.Close()
	if err := st.Verify(); err != nil {
		rep.violate("control plane store: %v", err)
	}

	// 4. Terminal states.
	incs, err := st.ListIncidents(store.IncidentFilter{})
	if err != nil {
		rep.violate("list incidents: %v", err)
	}
	for _, inc := range incs {
		rep.Incidents++
		switch inc.State {
		case store.IncidentResolved:
			rep.Resolved++
		case store.IncidentEscalated:
			rep.Escalated++
		default:
			rep.violate("incident %s (%s) is still %s: %s", inc.ID, inc.Policy, inc.State, inc.Reason)
		}
		its, _ := st.ListTasks(store.TaskFilter{IncidentID: inc.ID})
		if len(its) != inc.Attempts {
			rep.Notes = append(rep.Notes, fmt.Sprintf("incident %s: %d tasks, %d attempts counted", inc.ID, len(its), inc.Attempts))
		}
		if inc.Attempts > 1 || inc.State != store.IncidentResolved {
			var b strings.Builder
			fmt.Fprintf(&b, "incident %s on %s: %s after %d attempts", inc.ID, inc.AgentID, inc.State, inc.Attempts)
			for _, e := range inc.Timeline {
				fmt.Fprintf(&b, "\n    %s %-10s %s", e.At.Format("15:04:05.000"), e.Kind, e.Message)
			}
			rep.Notes = append(rep.Notes, b.String())
		}
	}

	for _, h := range hosts {
		a, err := st.GetAgentByName(h.Name)
		if err != nil {
			rep.violate("agent %s: %v", h.Name, err)
			continue
		}
		agentCopy := filepath.Join(tmp, h.Name+".db")
		if err := copyFile(filepath.Join(h.DataDir, "agent.db"), agentCopy); err != nil {
			rep.violate("copy agent.db of %s: %v", h.Name, err)
			continue
		}
		adb, err := state.Open(agentCopy, state.Options{})
		if err != nil {
			rep.violate("open agent.db of %s: %v", h.Name, err)
			continue
		}
		rep.checkResults(st, a, adb)
		rep.agentTaskHW[h.Name] = adb.TaskHighWater()
		adb.Close()
		rep.checkTasks(st, a, h)
	}
	return rep
}

func (rep *invariantReport) checkBolt(path string) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		rep.violate("open %s read-only: %v", path, err)
		return
	}
	defer db.Close()
	err = db.View(func(tx *bbolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	if err != nil {
		rep.violate("bbolt consistency check of %s: %v", path, err)
	}
	rep.checkedDBs++
}

// checkResults: invariant 1 for one agent.
func (rep *invariantReport) checkResults(st *bolt.Store, a store.Agent, adb *state.DB) {
	pendingN, dropped, next := adb.Stats()
	produced := next - 1
	pending, err := adb.Pending(0, 0)
	if err != nil {
		rep.violate("agent %s: read outbox: %v", a.Name, err)
		return
	}
	if uint64(len(pending)) != pendingN {
		rep.violate("agent %s: outbox says %d pending, holds %d", a.Name, pendingN, len(pending))
	}
	seen := map[uint64]string{}
	checks, err := st.ListCheckStates(a.ID)
	if err != nil {
		rep.violate("agent %s: list checks: %v", a.Name, err)
		return
	}
	var maxSeq uint64
	for _, c := range checks {
		rs, err := st.ListResults(a.ID, c.CheckID, 0)
		if err != nil {
			rep.violate("agent %s: list results of %s: %v", a.Name, c.CheckID, err)
			continue
		}
		if c.HistoryLen != uint64(len(rs)) {
			rep.violate("agent %s check %s: history length %d, %d results", a.Name, c.CheckID, c.HistoryLen, len(rs))
		}
		for _, r := range rs {
			s := r.GetSeq()
			if prev, dup := seen[s]; dup {
				rep.violate("agent %s: result seq %d stored twice (%s and %s)", a.Name, s, prev, c.CheckID)
			}
			seen[s] = c.CheckID
			if s == 0 || s > produced {
				rep.violate("agent %s: stored result seq %d was never produced (produced 1..%d)", a.Name, s, produced)
			}
			maxSeq = max(maxSeq, s)
		}
	}
	cnt, err := st.Counters(a.ID)
	if err != nil {
		rep.violate("agent %s: counters: %v", a.Name, err)
	} else {
		if cnt.ResultsStored != uint64(len(seen)) {
			rep.violate("agent %s: the control plane counted %d results stored, it holds %d distinct ones", a.Name, cnt.ResultsStored, len(seen))
		}
		if cnt.HighWater != maxSeq {
			rep.violate("agent %s: high-water mark %d, highest stored seq %d", a.Name, cnt.HighWater, maxSeq)
		}
	}
	inOutbox := map[uint64]bool{}
	for _, r := range pending {
		inOutbox[r.GetSeq()] = true
	}
	var missing []uint64
	for s := uint64(1); s <= produced; s++ {
		if _, ok := seen[s]; !ok && !inOutbox[s] {
			missing = append(missing, s)
		}
	}
	if uint64(len(missing)) > dropped {
		rep.violate("agent %s: %d results neither stored, pending nor counted as dropped (dropped %d; first missing seqs %v)",
			a.Name, uint64(len(missing))-dropped, dropped, missing[:min(len(missing), 10)])
	}
	if uint64(len(missing)) > a.OutboxDropped {
		rep.violate("agent %s: %d results lost to the bounded outbox, the control plane was told of %d", a.Name, len(missing), a.OutboxDropped)
	}
	rep.Results += produced
	rep.Stored += uint64(len(seen))
	rep.Pending += pendingN
	rep.Dropped += dropped
}

// checkTasks: invariants 2, 3 and 4 (tasks) for one agent.
func (rep *invariantReport) checkTasks(st *bolt.Store, a store.Agent, h invariantHost) {
	ts, err := st.ListTasks(store.TaskFilter{AgentID: a.ID})
	if err != nil {
		rep.violate("agent %s: list tasks: %v", a.Name, err)
		return
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].CreatedAt.Before(ts[j].CreatedAt) })
	runs, err := readRuns(h.Runs)
	if err != nil {
		rep.violate("agent %s: %v", a.Name, err)
		return
	}
	rep.Tasks += len(ts)
	rep.Runs += len(runs)
	perTask := map[string][]runLine{}
	for _, run := range runs {
		// The task whose output names this run; else the last task of the
		// policy created before it (tasks of one agent and policy follow
		// one another).
		owner := ""
		for _, t := range ts {
			if strings.Contains(t.Output, robustRunMarker+run.token) {
				owner = t.ID
			}
		}
		if owner == "" {
			for _, t := range ts {
				if !t.CreatedAt.After(run.at) && (run.policy == "" || run.policy == t.Policy) {
					owner = t.ID
				}
			}
		}
		if owner == "" {
			rep.violate("agent %s: a remediation ran at %s before any task was created", a.Name, run.at.Format(time.RFC3339Nano))
			continue
		}
		perTask[owner] = append(perTask[owner], run)
	}
	for _, t := range ts {
		rep.TaskStates[t.State]++
		if !store.TaskTerminal(t.State) {
			rep.violate("task %s (agent %s, seq %d) is still %s", t.ID, a.Name, t.Seq, t.State)
		}
		rs := perTask[t.ID]
		if len(rs) > 1 {
			rep.violate("task %s (agent %s, seq %d) ran %d times (runs at %s)", t.ID, a.Name, t.Seq, len(rs), runTimes(rs))
		}
		for _, run := range rs {
			if late := run.at.Sub(t.ExpiresAt); late > tasks.DefaultMaxSkew {
				rep.violate("task %s (agent %s, seq %d) ran %s after its expiry %s (the agent allows %s of skew)",
					t.ID, a.Name, t.Seq, late.Round(time.Millisecond), t.ExpiresAt.Format(time.RFC3339Nano), tasks.DefaultMaxSkew)
			}
			switch t.State {
			case store.TaskExpired, store.TaskRejected, store.TaskPending:
				rep.violate("task %s (agent %s, seq %d) ran at %s but the control plane has it %s",
					t.ID, a.Name, t.Seq, run.at.Format(time.RFC3339Nano), t.State)
			}
		}
		if len(rs) > 0 && t.Seq > rep.agentTaskHW[h.Name] {
			rep.violate("task %s (agent %s) ran with seq %d above the agent's high-water mark %d", t.ID, a.Name, t.Seq, rep.agentTaskHW[h.Name])
		}
	}
}

func runTimes(rs []runLine) string {
	var s []string
	for _, r := range rs {
		s = append(s, r.at.Format("15:04:05.000"))
	}
	return strings.Join(s, ", ")
}

// readRuns reads a host's runs file: one line per execution, the time in
// Unix nanoseconds and the policy. A missing file means no run.
func readRuns(path string) ([]runLine, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []runLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("runs file %s: bad line %q", path, sc.Text())
		}
		r := runLine{at: time.Unix(0, ns), token: fields[0]}
		if len(fields) > 1 {
			r.policy = fields[1]
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
