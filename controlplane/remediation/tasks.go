package remediation

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/governor"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/failpoint"
	"tend.dev/tend/internal/policy"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// dispatch creates (or, for an approved task, completes), signs, stores and
// sends one task for the incident.
func (m *Manager) dispatch(tr *track, p *policy.Policy) {
	rem := p.Spec.Remediation
	prm, err := m.taskParams(tr, p)
	if err != nil {
		m.escalate(tr, err.Error())
		return
	}
	ps, err := structpb.NewStruct(prm.values)
	if err != nil {
		m.escalate(tr, fmt.Sprintf("remediation params of %s: %v", p.Name(), err))
		return
	}
	signer := m.cfg.Signer()
	now := m.cfg.Now()
	attempt := tr.inc.Attempts + 1
	_, version, _ := m.cfg.Policies.Lookup(p.Name())
	seal := func(t *store.Task) error {
		t.State = store.TaskPending
		t.NotBefore = now.Add(-m.cfg.ClockSkew)
		t.ExpiresAt = now.Add(m.cfg.TaskTTL)
		env, err := task.Seal(signer, &taskv1.Task{
			TaskId:        t.ID,
			AgentId:       t.AgentID,
			IncidentId:    t.IncidentID,
			Policy:        t.Policy,
			PolicyVersion: t.PolicyVersion,
			Action:        t.Action,
			Params:        ps,
			Seq:           t.Seq,
			NotBefore:     timestamppb.New(t.NotBefore),
			ExpiresAt:     timestamppb.New(t.ExpiresAt),
			Timeout:       durationpb.New(rem.Timeout.D()),
			Attempt:       uint32(t.Attempt),
		})
		if err != nil {
			return err
		}
		t.Envelope = env
		return nil
	}
	approved := tr.approval
	if a := approved; a != nil {
		// Approved (or approval no longer required): sign the task the
		// person saw, with the params they approved.
		if string(a.Params) != string(prm.json) || a.Action != rem.Action {
			m.dropApproval(tr, "the policy's params changed before the task was sent")
			m.escalate(tr, fmt.Sprintf("the action or params of %s changed after task %s was put up for approval: approve the new task of a new incident instead", p.Name(), a.ID))
			return
		}
		if !a.ApprovalDeadline.IsZero() && !now.Before(a.ApprovalDeadline) && a.ApprovedBy != "" {
			m.escalate(tr, fmt.Sprintf("task %s was approved by %s but no budget slot came before its approval deadline %s: approve a new one",
				a.ID, a.ApprovedBy, a.ApprovalDeadline.UTC().Format(time.RFC3339)))
			return
		}
		attempt = a.Attempt
	}
	// One transaction: the task with the agent's next seq and its
	// signature, the events that explain it and the incident's new state,
	// with the writes still pending (the incident itself, when it opened
	// just now). Durable before the task leaves.
	incID := tr.inc.ID
	var stored store.Task
	var decided, signed store.Event
	err = m.commit(func(tx store.RemediationTx) error {
		var err error
		if approved != nil {
			stored, err = tx.SealTask(approved.ID, seal)
		} else {
			stored, err = tx.CreateTask(store.Task{
				ID:            newID("task"),
				IncidentID:    incID,
				AgentID:       tr.key.agent,
				Policy:        p.Name(),
				PolicyVersion: version,
				Action:        rem.Action,
				Params:        prm.json,
				State:         store.TaskPending,
				Attempt:       attempt,
				CreatedAt:     now,
			}, seal)
		}
		if err != nil {
			return err
		}
		decided = store.Event{At: now, Kind: "decided", TaskID: stored.ID,
			Message: fmt.Sprintf("attempt %d of %d: %s %s", attempt, rem.MaxAttempts, rem.Action, string(prm.json))}
		signed = store.Event{At: now, Kind: "signed", TaskID: stored.ID,
			Message: fmt.Sprintf("task %s seq %d signed with key %s, valid until %s", stored.ID, stored.Seq, signer.ID, stored.ExpiresAt.Format(time.RFC3339))}
		if err := tx.UpdateIncident(incID, eventChange(decided, store.IncidentRemediating, attempt)); err != nil {
			return err
		}
		return tx.UpdateIncident(incID, eventChange(signed, "", attempt))
	})
	if err != nil {
		m.log.Error("create task", "incident", incID, "err", err)
		m.escalate(tr, fmt.Sprintf("could not create the task: %v", err))
		return
	}
	failpoint.Inject(failpoint.CPAfterTaskPersist)
	if approved != nil {
		tr.approval = nil
	}
	tr.task = &stored
	tr.inc.Attempts = attempt
	m.running[p.Name()]++
	tr.slot = true
	m.hourWindow(p.Name()).Add(now)
	m.fleetHour.Add(now)
	applyEvent(tr, eventChange(decided, store.IncidentRemediating, attempt))
	applyEvent(tr, eventChange(signed, "", attempt))
	m.send(tr, stored)
	m.after(tr, stored.ExpiresAt.Add(expiryMargin), func() { m.expire(tr, stored.ID) })
}

// expiryMargin: the agent accepts a task up to 30 s past its expiry (clock
// skew), so the control plane gives up on it only after that, plus margin:
// a task it calls expired can no longer start.
const expiryMargin = 45 * time.Second

// noReportGrace is how long past its timeout a running task may stay
// without a report before the control plane gives up on it.
const noReportGrace = time.Minute

// send delivers a task if the agent is connected; otherwise it stays
// pending and is sent when the agent reconnects (while still valid).
func (m *Manager) send(tr *track, t store.Task) {
	s := m.cfg.Fleet.Session(t.AgentID)
	if s == nil {
		m.event(tr, store.Event{Kind: "sent", TaskID: t.ID, Message: "agent not connected: the task waits for it (until it expires)"}, "")
		return
	}
	failpoint.Inject(failpoint.CPBeforeTaskSend)
	if !s.TrySend(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Task{Task: &agentv1.TaskDelivery{Envelope: t.Envelope}}}) {
		m.event(tr, store.Event{Kind: "sent", TaskID: t.ID, Message: "agent stream busy: the task waits for the reconnect"}, "")
		return
	}
	// The mark waits for the next write: a crash before it leaves the task
	// pending, and it is sent again on the agent's next connect, which
	// ignores it (its seq is not above the agent's high-water mark).
	now := m.cfg.Now()
	id := t.ID
	m.later("mark task "+id+" sent", func(tx store.RemediationTx) error {
		return tx.UpdateTask(id, func(st *store.Task) error {
			if st.State == store.TaskPending {
				st.State = store.TaskSent
				st.SentAt = now
			}
			return nil
		})
	})
	if tr.task != nil && tr.task.ID == t.ID && tr.task.State == store.TaskPending {
		tr.task.State = store.TaskSent
	}
	m.event(tr, store.Event{At: now, Kind: "sent", TaskID: t.ID, Message: "task sent to the agent"}, "")
}

// expire marks a task that never started before its expiry.
func (m *Manager) expire(tr *track, taskID string) {
	if tr.task == nil || tr.task.ID != taskID {
		return
	}
	t, err := m.cfg.Store.GetTask(taskID)
	if err != nil {
		m.log.Error("expire task", "task", taskID, "err", err)
		m.after(tr, m.cfg.Now().Add(10*time.Second), func() { m.expire(tr, taskID) })
		return
	}
	switch t.State {
	case store.TaskPending, store.TaskSent:
		_ = m.finishTask(tr, t, store.TaskExpired, "the agent did not start it before it expired", nil)
	case store.TaskRunning:
		// Bounded by its timeout on the agent; if no report comes in time
		// (the host died, the report was lost), give up on it rather than
		// hold the incident and a max_concurrent slot forever.
		timeout := 30 * time.Second
		if p, _, ok := m.cfg.Policies.Lookup(t.Policy); ok && p.Spec.Remediation != nil {
			timeout = p.Spec.Remediation.Timeout.D()
		}
		start := t.StartedAt
		if start.IsZero() || start.After(m.cfg.Now()) {
			start = m.cfg.Now()
		}
		deadline := start.Add(timeout + noReportGrace)
		if m.cfg.Now().Before(deadline) {
			m.after(tr, deadline, func() { m.expire(tr, taskID) })
			return
		}
		_ = m.finishTask(tr, t, store.TaskFailed, fmt.Sprintf("no report from the agent within %s of the task starting", timeout+noReportGrace), nil)
	}
}

// OnTaskUpdate records an update reported by the agent, durably, before the
// agent's update is acknowledged. Updates about another agent's task, and
// late updates of finished tasks, are ignored (and acknowledged).
func (m *Manager) OnTaskUpdate(ctx context.Context, agentID string, u *agentv1.TaskUpdate) error {
	// The task's new state is committed before taskUpdate returns; the
	// events that follow from it (finished, verifying, retry, ...) are
	// written behind: the agent's acknowledgement does not wait for them.
	return m.callThen(ctx, func() error { return m.taskUpdate(agentID, u) }, false)
}

func taskStateWord(s agentv1.TaskState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "TASK_STATE_"))
}

func (m *Manager) taskUpdate(agentID string, u *agentv1.TaskUpdate) error {
	t, err := m.cfg.Store.GetTask(u.GetTaskId())
	if errors.Is(err, store.ErrNotFound) {
		m.log.Warn("update for an unknown task ignored", "agent_id", agentID, "task", u.GetTaskId(), "state", u.GetState(), "reason", u.GetReason())
		return nil
	}
	if err != nil {
		return err
	}
	if t.AgentID != agentID {
		m.log.Warn("agent reported on another agent's task: ignored", "agent_id", agentID, "task", t.ID, "owner", t.AgentID)
		return nil
	}
	if store.TaskTerminal(t.State) {
		return nil
	}
	if t.State == store.TaskAwaitingApproval || t.Seq == 0 {
		m.log.Warn("agent reported on a task it was never sent: ignored", "agent_id", agentID, "task", t.ID)
		return nil
	}
	tr := m.track(agentID, t.Policy)
	if tr.inc == nil || tr.inc.ID != t.IncidentID || tr.task == nil || tr.task.ID != t.ID {
		// Not the task in flight (e.g. after a restart): record it only.
		return m.commit(func(tx store.RemediationTx) error {
			return tx.UpdateTask(t.ID, func(st *store.Task) error {
				st.State = taskStateWord(u.GetState())
				st.Output, st.Reason = u.GetOutput(), u.GetReason()
				if store.TaskTerminal(st.State) {
					st.FinishedAt = u.GetAt().AsTime()
				}
				return nil
			})
		})
	}
	at := u.GetAt().AsTime()
	switch u.GetState() {
	case agentv1.TaskState_TASK_STATE_RUNNING:
		// The task's state and the event together, before the ack.
		started := eventChange(store.Event{At: m.cfg.Now(), Kind: "started", TaskID: t.ID, Message: "the agent verified the task and started " + t.Action}, "", tr.inc.Attempts)
		incID := tr.inc.ID
		if err := m.commit(func(tx store.RemediationTx) error {
			if err := tx.UpdateTask(t.ID, func(st *store.Task) error {
				st.State = store.TaskRunning
				st.StartedAt = at
				return nil
			}); err != nil {
				return err
			}
			return tx.UpdateIncident(incID, started)
		}); err != nil {
			return err
		}
		tr.task.State = store.TaskRunning
		if m.cfg.Observe != nil && !tr.triggerAt.IsZero() {
			m.cfg.Observe("trigger_to_task_running", m.cfg.Now().Sub(tr.triggerAt))
			tr.triggerAt = time.Time{}
		}
		applyEvent(tr, started)
	case agentv1.TaskState_TASK_STATE_SUCCEEDED:
		return m.finishTask(tr, t, store.TaskSucceeded, "", u)
	case agentv1.TaskState_TASK_STATE_FAILED:
		return m.finishTask(tr, t, store.TaskFailed, u.GetReason(), u)
	case agentv1.TaskState_TASK_STATE_REJECTED:
		return m.finishTask(tr, t, store.TaskRejected, u.GetReason(), u)
	case agentv1.TaskState_TASK_STATE_EXPIRED:
		return m.finishTask(tr, t, store.TaskExpired, u.GetReason(), u)
	default:
		return fmt.Errorf("task %s: unexpected state %s in an update", t.ID, u.GetState())
	}
	return nil
}

// finishTask records a terminal task state and moves the incident on. If
// the task cannot be stored, nothing changes and the error is returned (the
// agent's update is then not acknowledged, and comes again).
func (m *Manager) finishTask(tr *track, t store.Task, state, reason string, u *agentv1.TaskUpdate) error {
	now := m.cfg.Now()
	finished := now
	output := ""
	if u != nil {
		finished = u.GetAt().AsTime()
		output = u.GetOutput()
	}
	err := m.commit(func(tx store.RemediationTx) error {
		return tx.UpdateTask(t.ID, func(st *store.Task) error {
			st.State = state
			st.FinishedAt = finished
			st.Output = output
			st.Reason = reason
			return nil
		})
	})
	if err != nil {
		m.log.Error("finish task", "task", t.ID, "err", err)
		return err
	}
	// The task is over, but its max_concurrent slot is held until the
	// attempt is: a restart that "succeeds" and does not hold must not let
	// the next hosts be restarted before that is known.
	tr.task = nil
	tr.lastEnd = now
	if state != store.TaskSucceeded {
		m.releaseSlot(tr)
	}
	p, _, ok := m.cfg.Policies.Lookup(t.Policy)
	switch state {
	case store.TaskSucceeded:
		within := 30 * time.Second
		if ok && p.Spec.Remediation != nil && p.Spec.Remediation.Verify.Within.D() > 0 {
			within = p.Spec.Remediation.Verify.Within.D()
		}
		tr.finished = finished
		m.event(tr, store.Event{At: now, Kind: "finished", TaskID: t.ID, Message: "succeeded: " + firstLine(output)}, "")
		m.event(tr, store.Event{At: now, Kind: "verifying", TaskID: t.ID,
			Message: fmt.Sprintf("waiting up to %s for %s to pass again", within, t.Policy)}, store.IncidentVerifying)
		tr.verifyWaits = 0
		due := now.Add(within)
		m.after(tr, due, func() { m.notVerified(tr, t.Policy, within, due) })
	case store.TaskRejected:
		m.event(tr, store.Event{At: now, Kind: "rejected", TaskID: t.ID, Message: "the agent rejected the task: " + reason}, "")
		m.noteFailedAttempt(tr, "task "+t.ID+" rejected: "+reason)
		// A rejection (allow-list, signature, addressee) is deterministic:
		// retrying would be rejected again.
		m.escalate(tr, "the agent rejected the task: "+reason)
	case store.TaskExpired:
		m.event(tr, store.Event{At: now, Kind: "expired", TaskID: t.ID, Message: reason}, "")
		m.retryOrEscalate(tr, "task expired: "+reason)
	default:
		msg := reason
		if msg == "" {
			msg = firstLine(output)
		}
		m.event(tr, store.Event{At: now, Kind: "finished", TaskID: t.ID, Message: "failed: " + msg}, "")
		m.noteFailedAttempt(tr, "task "+t.ID+" failed: "+msg)
		m.retryOrEscalate(tr, "task failed: "+msg)
	}
	return nil
}

// notVerified ends an attempt whose check did not pass again in time (due
// is when the wait of within ended; the timer may come a little later).
func (m *Manager) notVerified(tr *track, pol string, within time.Duration, due time.Time) {
	if tr.inc == nil || tr.inc.State != store.IncidentVerifying {
		return
	}
	// No result at all in the wait (the agent is cut off, or its results
	// are held up): that is no evidence of failure. Wait longer rather than
	// act again on a host that may be fine. The wait is measured from when
	// it began, not from when the timer came: a result that came right
	// after the task finished counts however late the timer is.
	if tr.lastResult.Before(due.Add(-within)) && tr.verifyWaits < maxVerifyWaits {
		tr.verifyWaits++
		m.event(tr, store.Event{Kind: "verifying", Message: fmt.Sprintf("no result of %s from the agent in the last %s: waiting %s more (%d of %d)",
			pol, within, within, tr.verifyWaits, maxVerifyWaits)}, "")
		next := m.cfg.Now().Add(within)
		m.after(tr, next, func() { m.notVerified(tr, pol, within, next) })
		return
	}
	why := fmt.Sprintf("not verified: %s did not pass within %s of the task", pol, within)
	m.releaseSlot(tr)
	m.noteFailedAttempt(tr, why)
	m.retryOrEscalate(tr, why)
}

// maxVerifyWaits bounds how many times verification waits again for a
// silent agent before it counts as not verified.
const maxVerifyWaits = 10

// retryOrEscalate schedules the next attempt after the backoff, or
// escalates when the attempts are used up or the policy's breaker is open.
func (m *Manager) retryOrEscalate(tr *track, why string) {
	if ps, ok := m.pstate[tr.key.policy]; ok && ps.BreakerOpen {
		m.escalate(tr, fmt.Sprintf("%s; breaker_open: %s stopped acting (%s); re-arm it with `tendctl rearm policy %s`", why, tr.key.policy, ps.BreakerReason, tr.key.policy))
		return
	}
	p, _, ok := m.cfg.Policies.Lookup(tr.key.policy)
	if !ok || p.Spec.Remediation == nil {
		m.escalate(tr, why)
		return
	}
	rem := p.Spec.Remediation
	if tr.inc.Attempts >= rem.MaxAttempts {
		m.escalate(tr, fmt.Sprintf("%s; %d of %d attempts used", why, tr.inc.Attempts, rem.MaxAttempts))
		return
	}
	wait := rem.Backoff.D() << max(0, tr.inc.Attempts-1)
	at := m.cfg.Now().Add(wait)
	m.event(tr, store.Event{Kind: "retry", Message: fmt.Sprintf("%s; attempt %d of %d in %s (backoff doubles)", why, tr.inc.Attempts+1, rem.MaxAttempts, wait)}, store.IncidentOpen)
	m.after(tr, at, func() { m.attempt(tr) })
}

// resolve closes the incident after a verified recovery.
func (m *Manager) resolve(tr *track, why string) {
	now := m.cfg.Now()
	m.cancelTimer(tr)
	kind := "verified"
	if !strings.HasPrefix(why, "verified") {
		kind = "resolved"
	}
	m.event(tr, store.Event{At: now, Kind: kind, Message: why}, store.IncidentResolved)
	m.log.Info("incident resolved", "incident", tr.inc.ID, "agent_id", tr.key.agent, "policy", tr.key.policy, "why", why)
	m.dropApproval(tr, "not needed: the incident was resolved")
	tr.state.ResetAfterVerifiedRecovery()
	tr.resolved = now
	m.setInc(tr, nil)
	m.releaseTask(tr)
	tr.passes = 0
}

// releaseSlot frees the track's max_concurrent slot (held from dispatch
// until the attempt ends: task failed, rejected or expired, verified, or
// not verified) and gives waiting incidents their chance.
func (m *Manager) releaseSlot(tr *track) {
	if !tr.slot {
		return
	}
	tr.slot = false
	if m.running[tr.key.policy] > 0 {
		m.running[tr.key.policy]--
	}
	m.wakeWaiting(tr.key.policy, tr)
}

// wakeWaiting gives incidents of the policy that wait for a free slot
// (max_concurrent) a new chance now that a task has finished.
func (m *Manager) wakeWaiting(pol string, except *track) {
	for tr := range m.openTracks {
		if tr == except || tr.key.policy != pol || tr.inc == nil || tr.task != nil || tr.inc.State != store.IncidentSuppressed {
			continue
		}
		if last := lastEvent(tr.inc); last.Rule == governor.RuleMaxConcurrent || last.Rule == governor.RuleFleetMaxConcurrent {
			m.attempt(tr)
		}
	}
	// A fleet-wide slot freed: incidents of other policies waiting for it.
	if m.cfg.FleetMaxConcurrent > 0 {
		for _, tr := range m.sortedOpen() {
			if tr == except || tr.key.policy == pol || tr.inc == nil || tr.task != nil || tr.inc.State != store.IncidentSuppressed {
				continue
			}
			if lastEvent(tr.inc).Rule == governor.RuleFleetMaxConcurrent {
				m.attempt(tr)
			}
		}
	}
}

// releaseTask forgets the task in flight and frees its max_concurrent slot.
func (m *Manager) releaseTask(tr *track) {
	tr.task = nil
	m.releaseSlot(tr)
}
