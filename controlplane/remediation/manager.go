// Package remediation drives the remediation loop on the control plane:
// results in, through the trigger engine and the governor, to incidents,
// signed tasks, verification, retries and escalation. Every input is
// processed on one goroutine, in order, so the loop's state needs no locks;
// the decisions themselves are made by the pure engine and governor
// packages.
package remediation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"tend.dev/tend/controlplane/dispatch"
	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/governor"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/internal/engine"
	"tend.dev/tend/internal/pki"
	"tend.dev/tend/internal/policy"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Policies is what the manager needs to know about policies.
type Policies interface {
	// Lookup returns the current version of a policy.
	Lookup(name string) (*policy.Policy, uint64, bool)
	// MatchedCount is how many enrolled agents the policy's selector matches.
	MatchedCount(name string, agents []store.Agent) int
}

// Config wires a Manager.
type Config struct {
	Store    store.Store
	Fleet    *fleet.Registry
	Policies Policies
	// Signer returns the key that signs tasks now (key rotation may change
	// it between two tasks).
	Signer  func() *pki.SigningKey
	Webhook *dispatch.Webhook
	Log     *slog.Logger
	Now     func() time.Time
	// TaskTTL is how long a signed task stays valid for the agent to start
	// it (default 60s).
	TaskTTL time.Duration
	// ClockSkew backdates not-before (default 5s).
	ClockSkew time.Duration
	// Observe, if set, is told the latency from a result that completed a
	// trigger (received) to the task being reported running by the agent.
	Observe func(kind string, d time.Duration)
	// FleetMaxConcurrent and FleetMaxPerHour bound remediation tasks across
	// all policies (0: no limit).
	FleetMaxConcurrent int
	FleetMaxPerHour    int
	// OrderKeys verifies the standing orders in agents' autonomous run
	// reports (nil: every report is dropped).
	OrderKeys OrderKeys
	// OnHoldChange, if set, is called (on its own goroutine) when a
	// policy's breaker opens or closes or a correlated hold starts or ends.
	OnHoldChange func(policy string)
}

type key struct{ agent, policy string }

// track is the loop's memory of one (agent, policy).
type track struct {
	key      key
	state    engine.State
	inc      *store.Incident // open incident, nil if none
	task     *store.Task     // task in flight for the open incident
	approval *store.Task     // task awaiting approval for the open incident
	slot     bool            // holds a max_concurrent slot (dispatch to end of attempt)
	// lastResult: when the last result of this (agent, policy) arrived;
	// verifyWaits: how often verification waited again for a silent agent.
	lastResult  time.Time
	verifyWaits int
	passes      int       // consecutive passing results
	resolved    time.Time // last verified recovery (cooldown)
	lastEnd     time.Time // when the last attempt ended
	finished    time.Time // agent time the last task finished (verification)
	timer       *time.Timer
	timerGen    uint64
	triggerAt   time.Time // when the triggering result reached the control plane
}

// Manager is the remediation loop.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	queue []func()
	wake  chan struct{}
	stop  chan struct{}
	done  chan struct{}

	// Loop-owned state.
	tracks map[key]*track
	// openTracks: the tracks with an open incident (tr.inc set through setInc),
	// so that what looks for waiting incidents does not walk every
	// (agent, policy) of the fleet.
	openTracks map[*track]struct{}
	rules      map[string]ruleEntry // policy name → compiled rule of a version
	running    map[string]int       // policy → tasks in flight fleet-wide
	hour       map[string]*governor.HourWindow
	// fleetHour: task starts of all policies in the last hour.
	fleetHour governor.HourWindow
	// pstate: breaker and correlated hold per policy (persisted).
	pstate map[string]*store.PolicyState
	// failing: policy → agent → when its latest (failing) result came.
	failing    map[string]map[string]time.Time
	sweepArmed bool
	started    time.Time
	matched    map[string]matchedEntry
	// pending: writes waiting for the next commit (writes.go), the oldest
	// queued at pendingSince.
	pending      []pendingWrite
	pendingSince time.Time
	flushArmed   bool
	// held mirrors, for other goroutines, which policies are held.
	held sync.Map
}

type ruleEntry struct {
	version uint64
	rule    *engine.Rule
	err     error
}

// New creates a manager; Start runs it.
func New(cfg Config) *Manager {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TaskTTL <= 0 {
		cfg.TaskTTL = 60 * time.Second
	}
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = 5 * time.Second
	}
	return &Manager{
		cfg:        cfg,
		log:        cfg.Log,
		wake:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
		tracks:     map[key]*track{},
		openTracks: map[*track]struct{}{},
		rules:      map[string]ruleEntry{},
		running:    map[string]int{},
		hour:       map[string]*governor.HourWindow{},
		pstate:     map[string]*store.PolicyState{},
		failing:    map[string]map[string]time.Time{},
		matched:    map[string]matchedEntry{},
	}
}

// enqueue runs fn on the loop goroutine; it never blocks.
func (m *Manager) enqueue(fn func()) {
	m.mu.Lock()
	m.queue = append(m.queue, fn)
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// call runs fn on the loop and waits for it; what fn did is durable when
// the caller hears back.
func (m *Manager) call(ctx context.Context, fn func() error) error {
	return m.callThen(ctx, fn, true)
}

// callThen is call; with flush false, only what fn committed itself is
// durable when the caller hears back, its other writes wait for the next
// commit.
func (m *Manager) callThen(ctx context.Context, fn func() error, flush bool) error {
	errc := make(chan error, 1)
	m.enqueue(func() {
		err := fn()
		if flush {
			m.flush()
		}
		errc <- err
	})
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-m.done:
		return errors.New("remediation loop stopped")
	}
}

// Start loads open incidents and tasks in flight, then runs the loop.
func (m *Manager) Start() error {
	if err := m.recover(); err != nil {
		return err
	}
	go m.loop()
	return nil
}

// Stop ends the loop. Inputs still queued are dropped: task updates were
// not acknowledged, so the agents send them again; results are already in
// the store but their effect on the trigger windows is lost (the windows
// live in memory and refill from new results after a restart).
func (m *Manager) Stop() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
	for _, tr := range m.tracks {
		if tr.timer != nil {
			tr.timer.Stop()
		}
	}
}

func (m *Manager) loop() {
	defer close(m.done)
	defer m.flush()
	for {
		select {
		case <-m.stop:
			return
		case <-m.wake:
		}
		for {
			m.mu.Lock()
			q := m.queue
			m.queue = nil
			m.mu.Unlock()
			if len(q) == 0 {
				break
			}
			for _, fn := range q {
				select {
				case <-m.stop:
					return
				default:
				}
				fn()
			}
			// Busy without a break: the writes behind still go in time.
			if len(m.pending) > 0 && time.Since(m.pendingSince) >= maxWriteDelay {
				m.flush()
			}
		}
		m.writeBehind()
	}
}

func newID(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// setInc sets (or, with nil, clears) the open incident of a track.
func (m *Manager) setInc(tr *track, inc *store.Incident) {
	tr.inc = inc
	if inc == nil {
		delete(m.openTracks, tr)
	} else {
		m.openTracks[tr] = struct{}{}
	}
}

func (m *Manager) track(agentID, pol string) *track {
	k := key{agentID, pol}
	tr, ok := m.tracks[k]
	if !ok {
		tr = &track{key: k}
		m.tracks[k] = tr
	}
	return tr
}

func (m *Manager) rule(p *policy.Policy, version uint64) (*engine.Rule, error) {
	if e, ok := m.rules[p.Name()]; ok && e.version == version {
		return e.rule, e.err
	}
	r, err := engine.Compile(p)
	if err != nil {
		m.log.Error("policy trigger does not compile; policy ignored", "policy", p.Name(), "version", version, "err", err)
	}
	m.rules[p.Name()] = ruleEntry{version: version, rule: r, err: err}
	return r, err
}

// OnResults feeds durable results of one agent to the loop (called by the
// ingest path after the commit, before the acknowledgement).
func (m *Manager) OnResults(agentID string, results []*agentv1.CheckResult) {
	received := m.cfg.Now()
	m.enqueue(func() {
		for _, r := range results {
			m.observe(agentID, r, received, false)
		}
	})
}

// OnBacklogResults feeds durable results an agent had before its stream
// opened: old news, never a trigger, but a pass may still verify an
// incident and a failure or a pass still counts for correlation.
func (m *Manager) OnBacklogResults(agentID string, results []*agentv1.CheckResult) {
	received := m.cfg.Now()
	m.enqueue(func() {
		for _, r := range results {
			m.observe(agentID, r, received, true)
		}
	})
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

func (m *Manager) observe(agentID string, r *agentv1.CheckResult, received time.Time, backlog bool) {
	if strings.HasPrefix(r.GetCheckId(), "local/") {
		return
	}
	p, version, ok := m.cfg.Policies.Lookup(r.GetCheckId())
	if !ok {
		return
	}
	rule, err := m.rule(p, version)
	if err != nil {
		return
	}
	// The agent's labels only matter to a `when` expression: a copy of the
	// agent per result would be wasted on the path of every result.
	var labels map[string]string
	if rule.When != "" {
		agent, ok := m.cfg.Fleet.Get(agentID)
		if !ok {
			return
		}
		labels = agent.Labels
	}
	now := m.cfg.Now()
	if backlog {
		failed, passed, _ := rule.Classify(context.Background(), r, labels)
		m.noteResult(p, agentID, failed, passed, now)
		tr, ok := m.tracks[key{agentID, p.Name()}]
		if ok {
			tr.lastResult = now
		}
		if ok && passed && tr.inc != nil && tr.inc.State == store.IncidentVerifying && !r.GetStartedAt().AsTime().Before(tr.finished) {
			m.resolve(tr, fmt.Sprintf("verified: %s passed %s after the task finished (%s; reported after a reconnect)",
				p.Name(), r.GetStartedAt().AsTime().Sub(tr.finished).Round(time.Millisecond), firstLine(r.GetOutput())))
		}
		return
	}
	tr := m.track(agentID, p.Name())
	tr.lastResult = now
	d := rule.Observe(&tr.state, r, labels, now)
	if d.Passed {
		tr.passes++
	} else {
		tr.passes = 0
	}
	if !d.Ignored {
		m.noteResult(p, agentID, d.Failed, d.Passed, now)
	}

	if tr.inc == nil {
		// After an escalation the trigger stays set until the check has
		// passed a whole window on its own (fixed by a person, or gone).
		if tr.state.Triggered && tr.passes >= p.Spec.Trigger.Window {
			tr.state.ResetAfterVerifiedRecovery()
		}
		switch {
		case d.Trigger:
			tr.triggerAt = received
			m.open(tr, p, version, r, d)
		case d.Flapping:
			m.openFlapping(tr, p, version, d)
		}
		return
	}
	switch tr.inc.State {
	case store.IncidentVerifying:
		if d.Passed && !r.GetStartedAt().AsTime().Before(tr.finished) {
			m.resolve(tr, fmt.Sprintf("verified: %s passed %s after the task finished (%s)",
				p.Name(), r.GetStartedAt().AsTime().Sub(tr.finished).Round(time.Millisecond), firstLine(r.GetOutput())))
		}
	case store.IncidentFlapping:
		switch {
		case d.Flapping:
		case tr.passes >= p.Spec.Trigger.Window:
			m.resolve(tr, fmt.Sprintf("stopped flapping: %d passing results in a row", tr.passes))
		case d.Failures >= p.Spec.Trigger.Failures:
			m.event(tr, store.Event{Kind: "detected", Message: "stopped flapping and fails steadily: " + d.Reason}, store.IncidentOpen)
			m.attempt(tr)
		}
	case store.IncidentOpen, store.IncidentSuppressed:
		switch {
		case d.Flapping:
			m.event(tr, store.Event{Kind: "flapping", Message: d.Reason + "; automation paused while the check flaps"}, store.IncidentFlapping)
			m.cancelTimer(tr)
		case tr.task == nil && tr.passes >= p.Spec.Trigger.Window:
			m.resolve(tr, fmt.Sprintf("recovered without remediation: %d passing results in a row", tr.passes))
		case d.Failed && tr.task == nil && !tr.slot && lastEvent(tr.inc).Rule == governor.RuleRecovering:
			m.attempt(tr)
		}
	}
}

func (m *Manager) open(tr *track, p *policy.Policy, version uint64, r *agentv1.CheckResult, d engine.Decision) {
	now := m.cfg.Now()
	agent, _ := m.cfg.Fleet.Get(tr.key.agent)
	inc := store.Incident{
		ID:            newID("inc"),
		AgentID:       tr.key.agent,
		Policy:        p.Name(),
		PolicyVersion: version,
		State:         store.IncidentOpen,
		OpenedAt:      now,
		UpdatedAt:     now,
		Reason:        d.Reason,
		Timeline: []store.Event{{At: now, Kind: "detected",
			Message: fmt.Sprintf("%s on %s: %s; last result %s: %s", p.Name(), agent.Name, d.Reason, engine.StatusName(r.GetStatus()), firstLine(r.GetOutput()))}},
	}
	// The loop holds every open incident, so the store has none for this
	// (agent, policy) unless it was changed behind the loop's back: then
	// carry on with that one. One the store has open may be closed by a
	// write that waits (a recovery just verified): write it first.
	open, err := m.cfg.Store.OpenIncident(tr.key.agent, p.Name())
	if err == nil && m.pendingFor(open.ID) {
		m.flush()
		open, err = m.cfg.Store.OpenIncident(tr.key.agent, p.Name())
	}
	switch {
	case err == nil:
		m.setInc(tr, &open)
		if open.State == store.IncidentOpen || open.State == store.IncidentSuppressed {
			m.attempt(tr)
		}
		return
	case !errors.Is(err, store.ErrNotFound):
		m.log.Error("open incident", "agent_id", tr.key.agent, "policy", p.Name(), "err", err)
		return
	}
	// Written with the task, if one is sent now.
	m.laterInc(inc.ID, "create incident "+inc.ID, func(tx store.RemediationTx) error { return tx.CreateIncident(inc) })
	m.setInc(tr, &inc)
	tr.task = nil
	m.log.Info("incident opened", "incident", inc.ID, "agent", agent.Name, "policy", p.Name(), "reason", d.Reason)
	m.attempt(tr)
}

func (m *Manager) openFlapping(tr *track, p *policy.Policy, version uint64, d engine.Decision) {
	now := m.cfg.Now()
	inc := store.Incident{
		ID: newID("inc"), AgentID: tr.key.agent, Policy: p.Name(), PolicyVersion: version,
		State: store.IncidentFlapping, OpenedAt: now, UpdatedAt: now, Reason: d.Reason,
		Timeline: []store.Event{{At: now, Kind: "flapping", Message: d.Reason + "; no remediation while the check flaps"}},
	}
	m.laterInc(inc.ID, "create flapping incident "+inc.ID, func(tx store.RemediationTx) error { return tx.CreateIncident(inc) })
	m.setInc(tr, &inc)
}

func (m *Manager) cancelTimer(tr *track) {
	tr.timerGen++
	if tr.timer != nil {
		tr.timer.Stop()
		tr.timer = nil
	}
}

// after runs fn on the loop at t, unless another timer replaces it.
func (m *Manager) after(tr *track, at time.Time, fn func()) {
	m.cancelTimer(tr)
	gen := tr.timerGen
	d := time.Until(at)
	if d < 0 {
		d = 0
	}
	tr.timer = time.AfterFunc(d, func() {
		m.enqueue(func() {
			if tr.timerGen == gen {
				tr.timer = nil
				fn()
			}
		})
	})
}

func (m *Manager) hourWindow(pol string) *governor.HourWindow {
	h, ok := m.hour[pol]
	if !ok {
		h = &governor.HourWindow{}
		m.hour[pol] = h
	}
	return h
}

// attempt asks the governor whether automation may act now, and acts.
func (m *Manager) attempt(tr *track) {
	if tr.inc == nil || tr.task != nil {
		return
	}
	p, _, ok := m.cfg.Policies.Lookup(tr.key.policy)
	if !ok {
		m.escalate(tr, "the policy was deleted while the incident was open")
		return
	}
	if p.Spec.Remediation == nil {
		m.escalate(tr, "the policy has no remediation: a person must look")
		return
	}
	if a, ok := m.cfg.Fleet.Get(tr.key.agent); !ok || a.Revoked || !p.Matches(a.Labels) {
		m.escalate(tr, "the agent no longer matches the policy's selector (or was revoked): no more automation for this incident")
		return
	}
	now := m.cfg.Now()
	// The matched agents are counted only for a maxConcurrent in percent:
	// counting walks the fleet.
	matched := 0
	if l := p.Spec.Limits; l != nil && strings.HasSuffix(string(l.MaxConcurrent), "%") {
		matched = m.matchedCount(p.Name(), now)
	}
	in := governor.FromPolicy(p, matched)
	in.Now = now
	if a, ok := m.cfg.Fleet.Get(tr.key.agent); ok {
		in.Agent = a.Name
	}
	in.Attempts = tr.inc.Attempts
	in.LastAttemptEnd = tr.lastEnd
	in.LastResolved = tr.resolved
	in.Flapping = tr.state.Flapping
	in.Passing = tr.passes
	in.Running = m.running[p.Name()]
	hw := m.hourWindow(p.Name())
	in.StartedLastHour = hw.Count(now)
	in.PerHourFreeAt = hw.FreeAt(now, in.MaxPerHour)
	in.FleetRunning = m.fleetRunning()
	in.FleetMaxConcurrent = m.cfg.FleetMaxConcurrent
	in.FleetStartedLastHour = m.fleetHour.Count(now)
	in.FleetMaxPerHour = m.cfg.FleetMaxPerHour
	in.FleetPerHourFreeAt = m.fleetHour.FreeAt(now, m.cfg.FleetMaxPerHour)
	if ps, ok := m.pstate[p.Name()]; ok {
		in.BreakerOpen, in.BreakerDetail = ps.BreakerOpen, ps.BreakerReason
		in.Correlated = ps.Correlated
		if ps.Correlated {
			in.CorrelatedDetail = "fleet incident " + ps.FleetIncidentID + ": " + ps.CorrelatedReason
		}
	}
	if a := tr.approval; a != nil {
		in.Approved = a.ApprovedBy != ""
		in.ApprovalDeadline = a.ApprovalDeadline
	}
	dec := governor.Decide(in)
	if dec.Escalate {
		m.escalate(tr, dec.Reason)
		return
	}
	if dec.Rule == governor.RuleApprovalRequired && tr.approval == nil {
		m.requestApproval(tr, p)
		return
	}
	if dec.Rule == governor.RuleShadow {
		if prm, err := m.taskParams(tr, p); err == nil {
			dec.Reason += shadowMarker + p.Spec.Remediation.Action + " " + string(prm.json)
		}
	}
	if !dec.Act {
		last := lastEvent(tr.inc)
		if last.Kind != "suppressed" || last.Rule != dec.Rule {
			m.event(tr, store.Event{Kind: "suppressed", Rule: dec.Rule, Message: dec.Reason, TaskID: approvalID(tr)}, store.IncidentSuppressed)
		}
		if !dec.RetryAt.IsZero() {
			m.after(tr, dec.RetryAt, func() { m.attempt(tr) })
		}
		return
	}
	m.dispatch(tr, p)
}

func approvalID(tr *track) string {
	if tr.approval != nil {
		return tr.approval.ID
	}
	return ""
}

// fleetRunning is the number of tasks in flight across all policies.
func (m *Manager) fleetRunning() int {
	n := 0
	for _, c := range m.running {
		n += c
	}
	return n
}

func lastEvent(inc *store.Incident) store.Event {
	if inc == nil || len(inc.Timeline) == 0 {
		return store.Event{}
	}
	return inc.Timeline[len(inc.Timeline)-1]
}
