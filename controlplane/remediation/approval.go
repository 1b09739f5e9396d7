package remediation

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/policy"
)

// Human approval: a policy with requireApproval gets a task in state
// awaiting_approval, unsigned and without a seq, when the governor would
// otherwise act. `tendctl approve task ID` (operator) marks it approved and
// the governor is asked again: the budgets still apply. At approval the
// task gets its seq, times and signature (store.SealTask), so an approval
// that comes late never leaves an old seq behind a newer task. With no
// approval by the deadline (spec.remediation.approvalTimeout) the incident
// escalates.

// requestApproval creates the task that waits for approval.
func (m *Manager) requestApproval(tr *track, p *policy.Policy) {
	rem := p.Spec.Remediation
	params, err := m.taskParams(tr, p)
	if err != nil {
		m.escalate(tr, err.Error())
		return
	}
	now := m.cfg.Now()
	timeout := rem.ApprovalTimeout.D()
	if timeout <= 0 {
		timeout = policy.DefaultApprovalTimeout
	}
	_, version, _ := m.cfg.Policies.Lookup(p.Name())
	t := store.Task{
		ID: newID("task"), IncidentID: tr.inc.ID, AgentID: tr.key.agent, Policy: p.Name(), PolicyVersion: version,
		Action: rem.Action, Params: params.json, State: store.TaskAwaitingApproval, Attempt: tr.inc.Attempts + 1,
		CreatedAt: now, ApprovalDeadline: now.Add(timeout),
	}
	var stored store.Task
	err = m.commit(func(tx store.RemediationTx) (err error) {
		stored, err = tx.CreateTask(t, nil)
		return err
	})
	if err != nil {
		m.log.Error("create task awaiting approval", "incident", tr.inc.ID, "err", err)
		m.escalate(tr, fmt.Sprintf("could not create the task to approve: %v", err))
		return
	}
	tr.approval = &stored
	m.event(tr, store.Event{Kind: "suppressed", Rule: "approval_required", TaskID: stored.ID,
		Message: fmt.Sprintf("approval_required: %s requires approval: task %s (%s %s) waits for `tendctl approve task %s` until %s",
			p.Name(), stored.ID, rem.Action, string(params.json), stored.ID, stored.ApprovalDeadline.UTC().Format(time.RFC3339))}, store.IncidentSuppressed)
	m.after(tr, stored.ApprovalDeadline, func() { m.attempt(tr) })
}

// dropApproval ends a task that still waits for approval (the incident
// closed without it).
func (m *Manager) dropApproval(tr *track, why string) {
	if tr.approval == nil {
		return
	}
	id := tr.approval.ID
	tr.approval = nil
	now := m.cfg.Now()
	m.later("end task "+id+" awaiting approval", func(tx store.RemediationTx) error {
		return tx.UpdateTask(id, func(t *store.Task) error {
			if t.State == store.TaskAwaitingApproval {
				t.State = store.TaskExpired
				t.FinishedAt = now
				t.Reason = why
			}
			return nil
		})
	})
}

// Approve approves a task that waits for approval and lets the governor
// decide again; it returns the task as stored after the approval.
func (m *Manager) Approve(ctx context.Context, taskID, by, comment string) (store.Task, error) {
	var out store.Task
	err := m.call(ctx, func() error {
		m.flush() // an end of this task that waits
		t, err := m.cfg.Store.GetTask(taskID)
		if err != nil {
			return err
		}
		if t.State != store.TaskAwaitingApproval {
			return fmt.Errorf("task %s is %s: only a task awaiting approval can be approved: %w", taskID, t.State, store.ErrState)
		}
		tr, ok := m.tracks[key{t.AgentID, t.Policy}]
		if !ok || tr.approval == nil || tr.approval.ID != taskID || tr.inc == nil {
			return fmt.Errorf("task %s is not the one its incident waits for: %w", taskID, store.ErrState)
		}
		now := m.cfg.Now()
		if !now.Before(t.ApprovalDeadline) {
			return fmt.Errorf("task %s: its approval deadline %s has passed (the incident escalates): %w", taskID, t.ApprovalDeadline.UTC().Format(time.RFC3339), store.ErrState)
		}
		if err := m.commit(func(tx store.RemediationTx) error {
			return tx.UpdateTask(taskID, func(st *store.Task) error {
				st.ApprovedBy, st.ApprovedAt = by, now
				return nil
			})
		}); err != nil {
			return err
		}
		tr.approval.ApprovedBy, tr.approval.ApprovedAt = by, now
		msg := "approved by " + by
		if comment != "" {
			msg += ": " + comment
		}
		m.event(tr, store.Event{Kind: "approved", TaskID: taskID, Message: msg}, "")
		m.log.Info("task approved", "task", taskID, "by", by)
		m.attempt(tr)
		m.flush()
		out, err = m.cfg.Store.GetTask(taskID)
		return err
	})
	return out, err
}

// params is a task's parameters after label substitution.
type params struct {
	values map[string]any
	json   json.RawMessage
}

// taskParams substitutes the agent's labels into the policy's params.
func (m *Manager) taskParams(tr *track, p *policy.Policy) (params, error) {
	agent, _ := m.cfg.Fleet.Get(tr.key.agent)
	values, err := p.Spec.Remediation.ParamsFor(agent.Labels)
	if err != nil {
		return params{}, fmt.Errorf("remediation params of %s for this agent: %w", p.Name(), err)
	}
	b, err := json.Marshal(values)
	if err != nil {
		return params{}, fmt.Errorf("remediation params of %s: %w", p.Name(), err)
	}
	return params{values: values, json: b}, nil
}
