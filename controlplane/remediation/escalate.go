package remediation

import (
	"encoding/json"
	"fmt"
	"time"

	"tend.dev/tend/controlplane/dispatch"
	"tend.dev/tend/controlplane/store"
)

// Escalation is the JSON body posted to a policy's escalate.webhook: the
// whole story of the incident.
type Escalation struct {
	Kind     string         `json:"kind"` // "tend.escalation"
	Reason   string         `json:"reason"`
	Incident store.Incident `json:"incident"`
	Agent    struct {
		ID     string            `json:"id"`
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels,omitempty"`
	} `json:"agent"`
	Tasks []escalationTask `json:"tasks"`
}

type escalationTask struct {
	ID         string          `json:"id"`
	Action     string          `json:"action"`
	Params     json.RawMessage `json:"params,omitempty"`
	State      string          `json:"state"`
	Attempt    int             `json:"attempt"`
	Seq        uint64          `json:"seq"`
	CreatedAt  time.Time       `json:"createdAt"`
	FinishedAt time.Time       `json:"finishedAt,omitzero"`
	Output     string          `json:"output,omitempty"`
	Reason     string          `json:"reason,omitempty"`
}

// escalate closes the incident as escalated and calls the webhook, if the
// policy has one, without waiting for it.
func (m *Manager) escalate(tr *track, why string) {
	if tr.inc == nil {
		return
	}
	m.cancelTimer(tr)
	m.releaseTask(tr)
	m.dropApproval(tr, "not sent: the incident was escalated")
	m.event(tr, store.Event{Kind: "escalated", Message: why}, store.IncidentEscalated)
	inc := *tr.inc
	m.log.Warn("incident escalated", "incident", inc.ID, "agent_id", inc.AgentID, "policy", inc.Policy, "why", why)
	m.setInc(tr, nil)
	tr.passes = 0
	// The trigger stays set: no new incident (and no new automation) for
	// this check until it has passed a whole window on its own. The
	// cooldown runs from now as after a recovery, so an escalation can
	// never turn into a loop of incidents, tasks and webhooks.
	tr.resolved = m.cfg.Now()

	p, _, ok := m.cfg.Policies.Lookup(inc.Policy)
	if !ok || p.Spec.Escalate == nil || p.Spec.Escalate.Webhook == "" || m.cfg.Webhook == nil {
		return
	}
	body := Escalation{Kind: "tend.escalation", Reason: why, Incident: inc}
	if a, ok := m.cfg.Fleet.Get(inc.AgentID); ok {
		body.Agent.ID, body.Agent.Name, body.Agent.Labels = a.ID, a.Name, a.Labels
	}
	m.flush() // the tasks as they are now
	if tasks, err := m.cfg.Store.ListTasks(store.TaskFilter{IncidentID: inc.ID}); err == nil {
		for _, t := range tasks {
			body.Tasks = append(body.Tasks, escalationTask{ID: t.ID, Action: t.Action, Params: t.Params, State: t.State,
				Attempt: t.Attempt, Seq: t.Seq, CreatedAt: t.CreatedAt, FinishedAt: t.FinishedAt, Output: t.Output, Reason: t.Reason})
		}
	}
	payload, err := json.Marshal(body)
	if err != nil {
		m.log.Error("encode escalation", "err", err)
		return
	}
	url := p.Spec.Escalate.Webhook
	incID := inc.ID
	m.cfg.Webhook.Send(dispatch.WebhookJob{URL: url, Payload: payload, Done: func(err error) {
		msg := "escalation webhook delivered to " + url
		if err != nil {
			msg = fmt.Sprintf("escalation webhook to %s failed: %v", url, err)
		}
		m.enqueue(func() {
			ev := store.Event{At: m.cfg.Now(), Kind: "notified", Message: msg}
			m.laterInc(incID, "record webhook outcome on "+incID, func(tx store.RemediationTx) error {
				return tx.UpdateIncident(incID, appendEvents(ev))
			})
		})
	}})
}

// OnConnect is called when an agent's stream opens, with the highest task
// seq the agent has accepted. Tasks the agent never accepted (seq above
// its high-water mark) and that are still valid are sent again; tasks it
// accepted will be reported by the agent from its own outbox.
func (m *Manager) OnConnect(agentID string, taskHighWater uint64) {
	m.enqueue(func() {
		tasks, err := m.cfg.Store.ListTasks(store.TaskFilter{AgentID: agentID, States: []string{store.TaskPending, store.TaskSent}})
		if err != nil {
			m.log.Error("list tasks to resend", "agent_id", agentID, "err", err)
			return
		}
		now := m.cfg.Now()
		for i := len(tasks) - 1; i >= 0; i-- { // oldest first
			t := tasks[i]
			if t.Seq <= taskHighWater || !now.Before(t.ExpiresAt) {
				continue
			}
			tr := m.track(agentID, t.Policy)
			if tr.task == nil || tr.task.ID != t.ID {
				continue
			}
			m.send(tr, t)
		}
	})
}

// PolicyChanged gives the open incidents of a policy that was applied or
// deleted a new decision: a policy switched from shadow to enforce acts, a
// raised limit frees waiting incidents, a deleted policy escalates them.
func (m *Manager) PolicyChanged(name string) {
	m.enqueue(func() {
		for _, tr := range m.sortedOpen() {
			if tr.key.policy != name || tr.inc == nil || tr.task != nil {
				continue
			}
			switch tr.inc.State {
			case store.IncidentOpen, store.IncidentSuppressed:
				m.attempt(tr)
			case store.IncidentFlapping:
				if _, _, ok := m.cfg.Policies.Lookup(name); !ok {
					m.escalate(tr, "the policy was deleted while the incident was open")
				}
			}
		}
	})
}

// reconnectWindow is how long agents may take to come back after a
// control-plane restart (their longest backoff, 120 s + 20%, and margin).
const reconnectWindow = 150 * time.Second

// recover rebuilds the loop's memory from the store after a restart: open
// incidents, tasks in flight and their timers, the sliding hour of task
// starts (max_per_hour), the last attempt of each open incident (backoff)
// and the last close of each (agent, policy) (cooldown).
func (m *Manager) recover() error {
	now := m.cfg.Now()
	m.started = now
	states, err := m.cfg.Store.ListPolicyStates()
	if err != nil {
		return fmt.Errorf("load policy states: %w", err)
	}
	for i := range states {
		ps := states[i]
		m.pstate[ps.Policy] = &ps
		m.held.Store(ps.Policy, ps.BreakerOpen || ps.Correlated)
		if ps.Correlated {
			f := map[string]time.Time{}
			for _, a := range ps.FailingAgents {
				f[a] = now
			}
			m.failing[ps.Policy] = f
			m.armSweep()
		}
	}
	all, err := m.cfg.Store.ListIncidents(store.IncidentFilter{})
	if err != nil {
		return fmt.Errorf("load incidents: %w", err)
	}
	for _, inc := range all {
		if store.IncidentTerminal(inc.State) {
			tr := m.track(inc.AgentID, inc.Policy)
			if inc.ResolvedAt.After(tr.resolved) {
				tr.resolved = inc.ResolvedAt
			}
			if inc.State == store.IncidentEscalated && now.Sub(inc.ResolvedAt) < time.Hour {
				// Keep the trigger set: an escalated check that still fails
				// must not open a new incident right after a restart.
				tr.state.Triggered = true
			}
		}
	}
	tasks, err := m.cfg.Store.ListTasks(store.TaskFilter{})
	if err != nil {
		return fmt.Errorf("load tasks: %w", err)
	}
	for _, t := range tasks {
		if t.Seq == 0 {
			continue // never sent: awaiting approval, or dropped before
		}
		start := t.CreatedAt
		if !t.ApprovedAt.IsZero() {
			start = t.ApprovedAt
		}
		if now.Sub(start) < time.Hour {
			m.hourWindow(t.Policy).Add(start)
			m.fleetHour.Add(start)
		}
	}
	opened := 0
	for i := range all {
		inc := all[i]
		if store.IncidentTerminal(inc.State) {
			continue
		}
		opened++
		tr := m.track(inc.AgentID, inc.Policy)
		m.setInc(tr, &inc)
		tr.state.Triggered = true
		its, err := m.cfg.Store.ListTasks(store.TaskFilter{IncidentID: inc.ID})
		if err != nil {
			return fmt.Errorf("load tasks of %s: %w", inc.ID, err)
		}
		sealed := 0
		for j := range its {
			t := its[j]
			if t.Seq > 0 {
				sealed++
			}
			if t.State == store.TaskAwaitingApproval {
				tr.approval = &t
				continue
			}
			if !store.TaskTerminal(t.State) {
				if tr.task == nil {
					tr.task = &t
					m.running[t.Policy]++
					tr.slot = true
				}
			} else if t.FinishedAt.After(tr.lastEnd) {
				tr.lastEnd = t.FinishedAt
				tr.finished = t.FinishedAt
			}
		}
		// An attempt counts once its task is stored, even if the control
		// plane died before the incident recorded it.
		if sealed > tr.inc.Attempts {
			tr.inc.Attempts = sealed
		}
		switch {
		case tr.task != nil:
			id := tr.task.ID
			m.after(tr, tr.task.ExpiresAt.Add(expiryMargin), func() { m.expire(tr, id) })
		case inc.State == store.IncidentVerifying:
			within := 30 * time.Second
			if p, _, ok := m.cfg.Policies.Lookup(inc.Policy); ok && p.Spec.Remediation != nil {
				within = p.Spec.Remediation.Verify.Within.D()
			}
			// The attempt still holds its slot; the agents need up to the
			// reconnect window (their backoff) to send the results that
			// verify it, so the deadline starts after that.
			m.running[inc.Policy]++
			tr.slot = true
			m.after(tr, now.Add(within+reconnectWindow), func() {
				if tr.inc != nil && tr.inc.State == store.IncidentVerifying {
					m.releaseSlot(tr)
					m.retryOrEscalate(tr, "not verified after a control-plane restart")
				}
			})
		case inc.State == store.IncidentRemediating:
			// The task's end was recorded but not the incident's next state.
			m.after(tr, now, func() {
				if tr.inc != nil && tr.task == nil {
					m.retryOrEscalate(tr, "the task's outcome was not followed up before a control-plane restart")
				}
			})
		case inc.State == store.IncidentOpen || inc.State == store.IncidentSuppressed:
			m.after(tr, now, func() { m.attempt(tr) })
		}
	}
	if opened > 0 {
		m.log.Info("remediation state recovered", "open_incidents", opened)
	}
	return nil
}
