package remediation

import (
	"fmt"
	"slices"
	"time"

	"tend.dev/tend/controlplane/store"
)

// Writes. The loop's state is in memory; the store is written behind it,
// in as few transactions as the guarantees allow (each is a bbolt commit:
// two fdatasyncs, under the single writer lock the ingest's group commits
// also take). Two kinds of write:
//
//   - commit: what must be durable before the loop goes on. A task (its
//     per-agent seq and its signed envelope) before it is sent, with the
//     incident and the timeline events that explain it; a task's state
//     before the agent's update is acknowledged; an autonomous run's
//     record before its report is. Its error is the caller's to handle, as
//     a store call's was.
//   - later: everything else, chiefly timeline events and "sent" marks. It
//     joins the next commit, or is written maxWriteDelay after it was
//     queued, before a call (Approve, Rearm, an autonomous run's report;
//     not a task update) returns, and when the loop stops.
//
// So a decision is one transaction (incident, task, "detected", "decided"
// and "signed" together) where it was four, the "sent" mark that follows
// the send waits for the next write (usually the agent's "running")
// instead of holding the loop, and the writes behind cost at most one
// transaction per maxWriteDelay however many incidents they are for. A
// crash loses at most the last maxWriteDelay of them, as it lost the
// events not yet written before: the task and its seq are never among
// them, and the restart follows up what the store says (recover).
//
// The loop's copy of an incident changes when the event is queued, not
// when it is written: only a failing store makes the two differ (the
// failed writes are logged), as it did when a failed event was dropped.
//
// Reads of the store on the loop see what was written, not what is still
// pending: a read whose answer a pending write could change flushes first.
// The only task writes ever left pending are "sent" marks (pending → sent)
// and the end of a task awaiting approval (→ expired); every other change
// of a task's state is a commit. Reads that cannot tell those apart (the
// task updates' GetTask, OnConnect's list of pending and sent tasks) do
// not flush.

// maxWriteDelay bounds how long a pending write waits for a commit to
// join.
const maxWriteDelay = 50 * time.Millisecond

type pendingWrite struct {
	what string
	inc  string // the incident it writes, if any
	fn   func(tx store.RemediationTx) error
}

// later queues a write for the next commit.
func (m *Manager) later(what string, fn func(tx store.RemediationTx) error) {
	m.laterInc("", what, fn)
}

// laterInc is later for a write of incident inc.
func (m *Manager) laterInc(inc, what string, fn func(tx store.RemediationTx) error) {
	if len(m.pending) == 0 {
		m.pendingSince = time.Now()
	}
	m.pending = append(m.pending, pendingWrite{what: what, inc: inc, fn: fn})
}

// pendingFor reports whether a write of incident inc waits.
func (m *Manager) pendingFor(inc string) bool {
	for _, w := range m.pending {
		if w.inc == inc {
			return true
		}
	}
	return false
}

// commit writes the pending writes and then fn's (nil: none) in one
// transaction, and returns fn's error. If fn fails, the pending writes are
// written without it. If a pending write fails, or the commit does, each
// pending write is tried in a transaction of its own (those that fail are
// logged, as a failed store call was) before fn alone, so one bad write
// never takes the others with it. fn may run more than once: it must only
// write through tx and set its results.
func (m *Manager) commit(fn func(tx store.RemediationTx) error) error {
	ops := m.pending
	m.pending = nil
	if len(ops) == 0 && fn == nil {
		return nil
	}
	fnFailed := false
	err := m.cfg.Store.UpdateRemediation(func(tx store.RemediationTx) error {
		for _, op := range ops {
			if err := op.fn(tx); err != nil {
				return fmt.Errorf("%s: %w", op.what, err)
			}
		}
		if fn == nil {
			return nil
		}
		if err := fn(tx); err != nil {
			fnFailed = true
			return err
		}
		return nil
	})
	switch {
	case err == nil:
		return nil
	case fnFailed:
		m.writeAll(ops)
		return err
	}
	m.writeEach(ops)
	if fn == nil {
		return nil
	}
	return m.cfg.Store.UpdateRemediation(fn)
}

// writeAll writes ops in one transaction, or each in its own if that fails.
func (m *Manager) writeAll(ops []pendingWrite) {
	if len(ops) == 0 {
		return
	}
	err := m.cfg.Store.UpdateRemediation(func(tx store.RemediationTx) error {
		for _, op := range ops {
			if err := op.fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		m.writeEach(ops)
	}
}

// writeEach writes each of ops in a transaction of its own and logs those
// that fail.
func (m *Manager) writeEach(ops []pendingWrite) {
	for _, op := range ops {
		if err := m.cfg.Store.UpdateRemediation(op.fn); err != nil {
			m.log.Error("remediation store write failed", "write", op.what, "err", err)
		}
	}
}

// writeBehind writes the pending writes once they have waited
// maxWriteDelay, and otherwise sets a timer for then (the loop calls it
// when its queue is empty).
func (m *Manager) writeBehind() {
	if len(m.pending) == 0 || m.flushArmed {
		return
	}
	wait := maxWriteDelay - time.Since(m.pendingSince)
	if wait <= 0 {
		m.flush()
		return
	}
	m.flushArmed = true
	time.AfterFunc(wait, func() {
		m.enqueue(func() { m.flushArmed = false })
	})
}

// flush writes the pending writes.
func (m *Manager) flush() {
	_ = m.commit(nil)
}

// eventChange is the change an event makes to its incident: the event on
// the timeline, the state if one is given, the reason (but for the
// progress events), and the attempts the loop counts.
func eventChange(ev store.Event, state string, attempts int) func(*store.Incident) error {
	return func(inc *store.Incident) error {
		inc.Timeline = append(inc.Timeline, ev)
		inc.UpdatedAt = ev.At
		if state != "" {
			inc.State = state
			if store.IncidentTerminal(state) {
				inc.ResolvedAt = ev.At
			}
		}
		if ev.Kind != "started" && ev.Kind != "sent" && ev.Kind != "signed" {
			inc.Reason = ev.Message
		}
		inc.Attempts = attempts
		return nil
	}
}

// applyEvent makes change to the loop's copy of tr's incident (a new copy:
// one taken before, as escalate's, stays as it was).
func applyEvent(tr *track, change func(*store.Incident) error) {
	updated := *tr.inc
	updated.Timeline = slices.Clip(updated.Timeline)
	_ = change(&updated)
	tr.inc = &updated
}

// event appends to the open incident's timeline and optionally changes its
// state: at once in the loop's copy, in the store with the next commit.
func (m *Manager) event(tr *track, ev store.Event, state string) {
	if tr.inc == nil {
		return
	}
	if ev.At.IsZero() {
		ev.At = m.cfg.Now()
	}
	change := eventChange(ev, state, tr.inc.Attempts)
	applyEvent(tr, change)
	id := tr.inc.ID
	m.laterInc(id, "update incident "+id, func(tx store.RemediationTx) error { return tx.UpdateIncident(id, change) })
}

// appendEvents is a change that appends events without touching anything
// else (notes on an incident the loop does not hold).
func appendEvents(evs ...store.Event) func(*store.Incident) error {
	return func(inc *store.Incident) error {
		inc.Timeline = append(inc.Timeline, evs...)
		return nil
	}
}
