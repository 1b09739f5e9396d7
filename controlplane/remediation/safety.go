package remediation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/policy"
)

// The safety rails that look past one incident: the circuit breaker of a
// policy, correlated-failure suppression, and human approval. Their state
// that must survive a restart is a store.PolicyState per policy.

// policyState returns the loop's copy of a policy's state.
func (m *Manager) policyState(pol string) *store.PolicyState {
	ps, ok := m.pstate[pol]
	if !ok {
		ps = &store.PolicyState{Policy: pol}
		m.pstate[pol] = ps
	}
	return ps
}

// savePolicyState persists a policy's state with the next commit; a
// failure is logged (the loop keeps the state in memory and the next
// change writes it again).
func (m *Manager) savePolicyState(ps *store.PolicyState) {
	c := policyStateCopy(ps)
	m.later("save policy state "+c.Policy, func(tx store.RemediationTx) error { return tx.PutPolicyState(c) })
	m.noteHeld(ps)
}

// policyStateCopy is a copy of ps that shares nothing with it (the loop
// goes on changing ps and its slices while the copy waits to be written).
func policyStateCopy(ps *store.PolicyState) store.PolicyState {
	c := *ps
	c.Failures = slices.Clone(ps.Failures)
	c.FailingAgents = slices.Clone(ps.FailingAgents)
	c.ReportedRuns = slices.Clone(ps.ReportedRuns)
	return c
}

// noteHeld keeps the concurrent-safe view of which policies are held
// (breaker open or correlated hold) and tells Config.OnHoldChange when it
// changes: their standing orders must be withdrawn, or given back.
func (m *Manager) noteHeld(ps *store.PolicyState) {
	held := ps.BreakerOpen || ps.Correlated
	prev, _ := m.held.Load(ps.Policy)
	if was, _ := prev.(bool); was == held {
		return
	}
	m.held.Store(ps.Policy, held)
	if m.cfg.OnHoldChange != nil {
		go m.cfg.OnHoldChange(ps.Policy)
	}
}

// Held reports whether a policy may not act now as a whole (its breaker is
// open, or a correlated hold is on): no standing order is issued for it.
// Safe for concurrent use.
func (m *Manager) Held(pol string) bool {
	v, _ := m.held.Load(pol)
	h, _ := v.(bool)
	return h
}

func breakerOf(p *policy.Policy) policy.Breaker {
	if p != nil && p.Spec.Limits != nil && p.Spec.Limits.Breaker != nil {
		return *p.Spec.Limits.Breaker
	}
	return policy.Breaker{}
}

func correlationOf(p *policy.Policy) policy.Correlation {
	if p != nil && p.Spec.Limits != nil && p.Spec.Limits.Correlation != nil {
		return *p.Spec.Limits.Correlation
	}
	return policy.Correlation{}
}

// pruneFailures drops breaker failures older than the window.
func pruneFailures(ps *store.PolicyState, window time.Duration, now time.Time) {
	cut := now.Add(-window)
	i := 0
	for i < len(ps.Failures) && !ps.Failures[i].After(cut) {
		i++
	}
	ps.Failures = ps.Failures[i:]
}

// noteFailedAttempt counts a failed attempt (task failed or rejected, or
// not verified) against the policy's breaker, and opens it at the limit.
// It reports whether the breaker is open now.
func (m *Manager) noteFailedAttempt(tr *track, why string) bool {
	p, _, ok := m.cfg.Policies.Lookup(tr.key.policy)
	if !ok {
		return false
	}
	b := breakerOf(p)
	ps := m.policyState(p.Name())
	if ps.BreakerOpen {
		return true
	}
	if b.Failures <= 0 {
		return false
	}
	now := m.cfg.Now()
	pruneFailures(ps, b.Window.D(), now)
	ps.Failures = append(ps.Failures, now)
	if len(ps.Failures) >= b.Failures {
		ps.BreakerOpen = true
		ps.BreakerOpenedAt = now
		ps.BreakerReason = fmt.Sprintf("%d failed attempts within %s, the last: %s", len(ps.Failures), b.Window, why)
		m.log.Warn("circuit breaker opened: the policy stops acting until re-armed", "policy", p.Name(), "reason", ps.BreakerReason)
		m.event(tr, store.Event{Kind: "breaker", Rule: "breaker_open",
			Message: "circuit breaker of " + p.Name() + " opened: " + ps.BreakerReason + "; no more tasks until `tendctl rearm policy " + p.Name() + "`"}, "")
		m.savePolicyState(ps)
		// Incidents of the policy that wait escalate now, not when their
		// timer fires.
		m.enqueue(func() { m.reattempt(p.Name(), nil) })
		return true
	}
	m.savePolicyState(ps)
	return false
}

// reattempt asks the governor again for every waiting incident of the
// policy (no task in flight), or only those stopped by one of rules.
func (m *Manager) reattempt(pol string, rules []string) {
	for _, tr := range m.sortedOpen() {
		if tr.key.policy != pol || tr.inc == nil || tr.task != nil {
			continue
		}
		if tr.inc.State != store.IncidentOpen && tr.inc.State != store.IncidentSuppressed {
			continue
		}
		if rules != nil {
			last := lastEvent(tr.inc)
			if last.Kind != "suppressed" || !slices.Contains(rules, last.Rule) {
				continue
			}
		}
		m.attempt(tr)
	}
}

// sortedOpen returns the tracks with an open incident in a stable order
// (policy, agent), so that which incident gets a freed slot does not depend
// on map order.
func (m *Manager) sortedOpen() []*track {
	out := make([]*track, 0, len(m.openTracks))
	for tr := range m.openTracks {
		out = append(out, tr)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].key.policy != out[j].key.policy {
			return out[i].key.policy < out[j].key.policy
		}
		return out[i].key.agent < out[j].key.agent
	})
	return out
}

// noteResult keeps, per policy, the agents whose latest result fails (and
// when it came), for correlated-failure suppression. A new failing agent
// may start a correlated hold.
func (m *Manager) noteResult(p *policy.Policy, agentID string, failed, passed bool, now time.Time) {
	f := m.failing[p.Name()]
	if passed || correlationOf(p).Percent <= 0 {
		if f != nil {
			delete(f, agentID)
		}
		return
	}
	if !failed {
		return // a warning or unknown result changes nothing
	}
	if f == nil {
		f = map[string]time.Time{}
		m.failing[p.Name()] = f
	}
	_, was := f[agentID]
	f[agentID] = now
	if !was {
		m.checkCorrelation(p, now)
		m.armSweep()
	}
}

// correlatedNow counts the policy's agents whose latest result failed
// within the window and says whether that is a correlated failure.
func (m *Manager) correlatedNow(p *policy.Policy, now time.Time) (bool, int, int) {
	c := correlationOf(p)
	cut := now.Add(-c.Window.D())
	n := 0
	for _, at := range m.failing[p.Name()] {
		if at.After(cut) {
			n++
		}
	}
	if c.Percent <= 0 || n < c.MinAgents {
		return false, n, 0
	}
	matched := m.matchedCount(p.Name(), now)
	return n*100 > c.Percent*matched, n, matched
}

// correlationOver says whether a correlated hold may end: an agent leaves
// the failing set only with a passing result (an agent that went silent,
// as in a network split, still counts), and the hold ends only when at
// most half the share that started it still fails, or fewer than
// minAgents.
func (m *Manager) correlationOver(p *policy.Policy, now time.Time) (bool, int, int) {
	c := correlationOf(p)
	n := len(m.failing[p.Name()])
	matched := m.matchedCount(p.Name(), now)
	return c.Percent <= 0 || n < c.MinAgents || n*200 <= c.Percent*matched, n, matched
}

// matchedTTL is how long a policy's count of matched agents is reused:
// counting walks the whole fleet, too much to do for every failing agent
// of a large fleet failing at once.
const matchedTTL = 2 * time.Second

// matchedCount is how many agents the policy's selector matches, counted
// at most every matchedTTL.
func (m *Manager) matchedCount(pol string, now time.Time) int {
	if c, ok := m.matched[pol]; ok && now.Sub(c.at) >= 0 && now.Sub(c.at) < matchedTTL {
		return c.n
	}
	n := m.cfg.Policies.MatchedCount(pol, m.cfg.Fleet.List())
	m.matched[pol] = matchedEntry{n: n, at: now}
	return n
}

type matchedEntry struct {
	n  int
	at time.Time
}

// checkCorrelation opens a correlated hold for the policy when too many of
// its agents fail: one fleet-wide incident, escalated, and no host-by-host
// remediation while it lasts.
func (m *Manager) checkCorrelation(p *policy.Policy, now time.Time) {
	ps := m.policyState(p.Name())
	if ps.Correlated {
		return
	}
	corr, n, matched := m.correlatedNow(p, now)
	if !corr {
		return
	}
	c := correlationOf(p)
	names := m.failingNames(p.Name(), 10)
	reason := fmt.Sprintf("%d of %d agents matched by %s fail it within %s (more than %d%%): %s — a shared cause (a bad deploy, a network split) is not fixed host by host",
		n, matched, p.Name(), c.Window, c.Percent, names)
	ps.Correlated, ps.CorrelatedAt, ps.CorrelatedReason = true, now, reason
	ps.FailingAgents = ps.FailingAgents[:0]
	for a := range m.failing[p.Name()] {
		ps.FailingAgents = append(ps.FailingAgents, a)
	}
	sort.Strings(ps.FailingAgents)
	m.log.Warn("correlated failure: host-by-host remediation held", "policy", p.Name(), "failing", n, "matched", matched)

	_, version, _ := m.cfg.Policies.Lookup(p.Name())
	inc := store.Incident{
		ID: newID("inc"), AgentID: store.FleetAgentID, Policy: p.Name(), PolicyVersion: version,
		State: store.IncidentOpen, OpenedAt: now, UpdatedAt: now, Reason: reason,
		Timeline: []store.Event{{At: now, Kind: "detected", Rule: "correlated", Message: "fleet-wide: " + reason}},
	}
	if err := m.commit(func(tx store.RemediationTx) error { return tx.CreateIncident(inc) }); err != nil {
		if open, err2 := m.cfg.Store.OpenIncident(store.FleetAgentID, p.Name()); err2 == nil {
			inc = open
		} else {
			m.log.Error("open fleet incident", "policy", p.Name(), "err", err)
		}
	}
	ps.FleetIncidentID = inc.ID
	m.savePolicyState(ps)
	// The fleet incident goes to a person at once: it has no remediation.
	tr := &track{key: key{store.FleetAgentID, p.Name()}, inc: &inc}
	m.escalate(tr, "correlated failure: "+reason+"; no task is sent to any of its agents until fewer fail (or `tendctl rearm policy "+p.Name()+"`)")
	// Incidents already waiting are held now.
	m.reattempt(p.Name(), nil)
}

// failingNames lists up to max failing agents of a policy by name.
func (m *Manager) failingNames(pol string, limit int) string {
	var names []string
	for id := range m.failing[pol] {
		name := id
		if a, ok := m.cfg.Fleet.Get(id); ok {
			name = a.Name
		}
		names = append(names, name)
	}
	sort.Strings(names)
	extra := ""
	if len(names) > limit {
		extra = fmt.Sprintf(" and %d more", len(names)-limit)
		names = names[:limit]
	}
	return strings.Join(names, ", ") + extra
}

// sweepEvery is how often stale failing entries are pruned and correlated
// holds re-checked.
const sweepEvery = 5 * time.Second

// armSweep starts the periodic sweep if it is not running.
func (m *Manager) armSweep() {
	if m.sweepArmed {
		return
	}
	m.sweepArmed = true
	time.AfterFunc(sweepEvery, func() { m.enqueue(m.sweep) })
}

// sweep ends correlated holds when few enough agents fail (no sooner than a
// window after the hold began, or after the loop started, so that a restart
// does not end a hold before the agents have reported again).
func (m *Manager) sweep() {
	m.sweepArmed = false
	now := m.cfg.Now()
	busy := false
	for pol, ps := range m.pstate {
		if !ps.Correlated {
			continue
		}
		busy = true
		p, _, ok := m.cfg.Policies.Lookup(pol)
		if !ok {
			continue
		}
		w := correlationOf(p).Window.D()
		if now.Sub(ps.CorrelatedAt) < w || now.Sub(m.started) < w {
			continue
		}
		if over, n, matched := m.correlationOver(p, now); over {
			m.endCorrelation(p.Name(), fmt.Sprintf("correlated failure over: %d of %d agents still fail %s", n, matched, pol), "")
		}
	}
	for pol, f := range m.failing {
		if _, _, ok := m.cfg.Policies.Lookup(pol); !ok || len(f) == 0 {
			delete(m.failing, pol)
			continue
		}
		busy = true
	}
	if busy {
		m.armSweep()
	}
}

// endCorrelation ends a policy's correlated hold and lets its waiting
// incidents act again.
func (m *Manager) endCorrelation(pol, why, by string) {
	ps := m.policyState(pol)
	if !ps.Correlated {
		return
	}
	fleetInc := ps.FleetIncidentID
	ps.Correlated, ps.CorrelatedReason, ps.FleetIncidentID = false, "", ""
	ps.CorrelatedAt, ps.FailingAgents = time.Time{}, nil
	m.savePolicyState(ps)
	m.log.Info("correlated hold ended", "policy", pol, "why", why, "by", by)
	if fleetInc != "" {
		ev := store.Event{At: m.cfg.Now(), Kind: "resolved", Rule: "correlated", Message: why}
		m.laterInc(fleetInc, "record end of correlated hold on "+fleetInc, func(tx store.RemediationTx) error {
			// A fleet incident that is gone (a store from before) is no error.
			if err := tx.UpdateIncident(fleetInc, appendEvents(ev)); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			return nil
		})
	}
	m.reattempt(pol, []string{"correlated"})
}

// Rearm closes a policy's circuit breaker and ends its correlated hold;
// it is `tendctl rearm policy`.
func (m *Manager) Rearm(ctx context.Context, pol, by, comment string) (PolicyStatus, error) {
	var st PolicyStatus
	err := m.call(ctx, func() error {
		if _, _, ok := m.cfg.Policies.Lookup(pol); !ok {
			return fmt.Errorf("policy %q: %w", pol, store.ErrNotFound)
		}
		why := "re-armed by " + by
		if comment != "" {
			why += ": " + comment
		}
		ps := m.policyState(pol)
		ps.BreakerOpen, ps.BreakerReason, ps.Failures = false, "", nil
		ps.BreakerOpenedAt = time.Time{}
		ps.RearmedAt, ps.RearmedBy = m.cfg.Now(), by
		m.savePolicyState(ps)
		m.log.Info("policy re-armed", "policy", pol, "by", by, "comment", comment)
		m.endCorrelation(pol, "correlated hold ended: "+why, by)
		m.reattempt(pol, []string{"breaker_open"})
		st = m.status(pol)
		return nil
	})
	return st, err
}

// PolicyStatus is the state of a policy's safety rails, for `tendctl
// describe policy`.
type PolicyStatus struct {
	BreakerOpen      bool
	BreakerReason    string
	BreakerOpenedAt  time.Time
	BreakerFailures  int
	Correlated       bool
	CorrelatedReason string
	FleetIncident    string
	Running          int
	StartedLastHour  int
	WouldHaveActed   []ShadowDecision
}

// ShadowDecision is one "would have acted" of a shadow policy.
type ShadowDecision struct {
	At       time.Time
	Incident string
	AgentID  string
	Action   string
	Params   json.RawMessage
	Reason   string
}

// Status returns a policy's safety-rail state and, for shadow mode, up to
// limit would-have-acted decisions, newest first.
func (m *Manager) Status(ctx context.Context, pol string, limit int) (PolicyStatus, error) {
	var st PolicyStatus
	if err := m.call(ctx, func() error { st = m.status(pol); return nil }); err != nil {
		return st, err
	}
	incs, err := m.cfg.Store.ListIncidents(store.IncidentFilter{Policy: pol})
	if err != nil {
		return st, err
	}
	for _, inc := range incs {
		for i := len(inc.Timeline) - 1; i >= 0; i-- {
			ev := inc.Timeline[i]
			if ev.Rule != "shadow" {
				continue
			}
			d := ShadowDecision{At: ev.At, Incident: inc.ID, AgentID: inc.AgentID, Reason: ev.Message}
			d.Action, d.Params = shadowWhat(ev.Message)
			st.WouldHaveActed = append(st.WouldHaveActed, d)
		}
	}
	sort.SliceStable(st.WouldHaveActed, func(i, j int) bool { return st.WouldHaveActed[i].At.After(st.WouldHaveActed[j].At) })
	if limit > 0 && len(st.WouldHaveActed) > limit {
		st.WouldHaveActed = st.WouldHaveActed[:limit]
	}
	return st, nil
}

func (m *Manager) status(pol string) PolicyStatus {
	now := m.cfg.Now()
	st := PolicyStatus{Running: m.running[pol], StartedLastHour: m.hourWindow(pol).Count(now)}
	if ps, ok := m.pstate[pol]; ok {
		if p, _, ok := m.cfg.Policies.Lookup(pol); ok {
			pruneFailures(ps, breakerOf(p).Window.D(), now)
		}
		st.BreakerOpen, st.BreakerReason, st.BreakerOpenedAt = ps.BreakerOpen, ps.BreakerReason, ps.BreakerOpenedAt
		st.BreakerFailures = len(ps.Failures)
		st.Correlated, st.CorrelatedReason, st.FleetIncident = ps.Correlated, ps.CorrelatedReason, ps.FleetIncidentID
	}
	return st
}

// shadowMarker separates the reason from the would-be task in a shadow
// event's message.
const shadowMarker = " | would send: "

// shadowWhat reads the action and params back from a shadow event.
func shadowWhat(msg string) (string, json.RawMessage) {
	_, what, ok := strings.Cut(msg, shadowMarker)
	if !ok {
		return "", nil
	}
	action, params, _ := strings.Cut(what, " ")
	if !json.Valid([]byte(params)) {
		return action, nil
	}
	return action, json.RawMessage(params)
}
