package remediation

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Autonomous runs: what an agent did alone under a standing order while it
// could not reach the control plane, reported when it reconnects. Each
// becomes an incident with the agent's own timeline (or joins the open
// incident of that agent and policy), resolved if the agent verified the
// recovery, escalated if not.

// maxReportedRuns bounds the run ids a policy remembers (reports that
// joined an open incident); an agent resends an unacknowledged report on
// its next connect, long before that many more runs.
const maxReportedRuns = 256

// OrderKeys returns every key that may have signed a standing order (the
// ring's keys, retired ones included: a report is history, not an order).
type OrderKeys func() map[string]ed25519.PublicKey

// OnAutonomousRun records an agent's report durably (the agent keeps it
// until this returns nil). A report whose order this control plane did not
// sign for that agent is logged and dropped.
func (m *Manager) OnAutonomousRun(ctx context.Context, agentID string, run *agentv1.AutonomousRun) error {
	return m.call(ctx, func() error { return m.autonomousRun(agentID, run) })
}

func (m *Manager) autonomousRun(agentID string, run *agentv1.AutonomousRun) error {
	var keys map[string]ed25519.PublicKey
	if m.cfg.OrderKeys != nil {
		keys = m.cfg.OrderKeys()
	}
	o, err := task.OpenStandingOrder(run.GetOrderEnvelope(), keys)
	if err != nil {
		m.log.Warn("autonomous run report dropped: its standing order does not verify", "agent_id", agentID, "run", run.GetRunId(), "err", err)
		return nil
	}
	if o.GetAgentId() != agentID {
		m.log.Warn("autonomous run report dropped: the order is for another agent", "agent_id", agentID, "order_agent", o.GetAgentId(), "run", run.GetRunId())
		return nil
	}
	if at := run.GetTriggeredAt().AsTime(); at.Before(o.GetNotBefore().AsTime()) || at.After(o.GetExpiresAt().AsTime().Add(time.Minute)) {
		m.log.Warn("autonomous run report dropped: triggered outside its order's validity", "agent_id", agentID, "run", run.GetRunId(), "order", o.GetOrderId())
		return nil
	}
	incID := "inc-" + run.GetRunId()
	m.flush() // the reads below see every earlier report
	if _, err := m.cfg.Store.GetIncident(incID); err == nil {
		return nil // reported before
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	// A report that joined an open incident leaves no incident of its own:
	// the run id is remembered in the order's policy state.
	ps := m.policyState(o.GetPolicy())
	if slices.Contains(ps.ReportedRuns, run.GetRunId()) {
		return nil
	}
	agentName := agentID
	if a, ok := m.cfg.Fleet.Get(agentID); ok {
		agentName = a.Name
	}
	prefix := fmt.Sprintf("on %s, offline, under standing order %s: ", agentName, o.GetOrderId())
	var events []store.Event
	for _, e := range run.GetEvents() {
		events = append(events, store.Event{At: e.GetAt().AsTime(), Kind: e.GetKind(), Message: prefix + e.GetMessage()})
	}
	now := m.cfg.Now()
	outcome := "verified"
	if !run.GetVerified() {
		outcome = "not verified"
	}
	marker := store.Event{At: now, Kind: "reported", Message: fmt.Sprintf("autonomous run %s reported by %s on reconnect: %s %s, %s",
		run.GetRunId(), agentName, o.GetAction(), taskStateWord(run.GetState()), outcome)}
	events = append(events, marker)

	opened := run.GetTriggeredAt().AsTime()
	if opened.IsZero() || opened.After(now) {
		opened = now
	}
	inc := store.Incident{ID: incID, AgentID: agentID, Policy: o.GetPolicy(), PolicyVersion: o.GetPolicyVersion(),
		State: store.IncidentOpen, OpenedAt: opened, UpdatedAt: now, Reason: marker.Message, Timeline: events, Attempts: 1}
	tr := m.track(agentID, o.GetPolicy())
	if err := m.commit(func(tx store.RemediationTx) error { return tx.CreateIncident(inc) }); err != nil {
		if !errors.Is(err, store.ErrExists) {
			return err
		}
		// The (agent, policy) has an open incident: the run is part of it.
		open, err := m.cfg.Store.OpenIncident(agentID, o.GetPolicy())
		if err != nil {
			return err
		}
		for _, e := range open.Timeline {
			if e.Kind == "reported" && strings.Contains(e.Message, "autonomous run "+run.GetRunId()+" ") {
				return nil
			}
		}
		runs := append(slices.Clone(ps.ReportedRuns), run.GetRunId())
		if len(runs) > maxReportedRuns {
			runs = runs[len(runs)-maxReportedRuns:]
		}
		// The events and the run id that deduplicates them, together.
		saved := policyStateCopy(ps)
		saved.ReportedRuns = runs
		if err := m.commit(func(tx store.RemediationTx) error {
			if err := tx.UpdateIncident(open.ID, func(i *store.Incident) error {
				i.Timeline = append(i.Timeline, events...)
				i.UpdatedAt = now
				return nil
			}); err != nil {
				return err
			}
			return tx.PutPolicyState(saved)
		}); err != nil {
			return err
		}
		ps.ReportedRuns = runs
		if tr.inc != nil && tr.inc.ID == open.ID {
			tr.inc.Timeline = append(tr.inc.Timeline, events...)
		}
		m.log.Info("autonomous run joined the open incident", "incident", open.ID, "agent", agentName, "run", run.GetRunId())
		return nil
	}
	m.log.Info("autonomous run recorded", "incident", incID, "agent", agentName, "policy", o.GetPolicy(), "action", o.GetAction(), "verified", run.GetVerified())
	rec := &track{key: key{agentID, o.GetPolicy()}, inc: &inc}
	if run.GetVerified() && run.GetState() == agentv1.TaskState_TASK_STATE_SUCCEEDED {
		m.event(rec, store.Event{At: now, Kind: "verified", Message: fmt.Sprintf("verified by the agent at %s: the check passed again after the action", run.GetVerifiedAt().AsTime().UTC().Format("15:04:05.000"))}, store.IncidentResolved)
		// The loop's memory of the check starts afresh, as after any
		// verified recovery, and the cooldown runs from it.
		tr.state.ResetAfterVerifiedRecovery()
		tr.resolved = now
		tr.passes = 0
		return nil
	}
	why := "the agent's autonomous run did not fix it: " + taskStateWord(run.GetState())
	if run.GetReason() != "" {
		why += ": " + run.GetReason()
	}
	if run.GetState() == agentv1.TaskState_TASK_STATE_SUCCEEDED {
		why = "the agent's autonomous run succeeded but the check did not pass again in time"
	}
	m.escalate(rec, why)
	return nil
}
