// Package autonomy lets an agent remediate by itself while it cannot reach
// the control plane, under standing orders the control plane signed in
// advance: one per autonomous policy that matches this agent, for this
// agent only, with an expiry and an hourly budget.
//
// While connected, the agent only watches: it keeps the trigger state of
// every ordered check up to date and acts on nothing (the control plane
// does). Once the control plane has been unreachable for an order's
// offline_after, a trigger of that order's check runs its action — after
// the order's signature, addressee and validity are checked again, the
// host's allow-list and the plugin's parameter validation, exactly as for a
// task — at most max_per_hour times in any hour (the budget is persisted
// before each run, so a crash or restart cannot reset it), with at least
// the order's backoff between two runs. Then the agent waits for the check
// to pass within verify_within. The whole story is kept in its database
// and reported (agentv1.AutonomousRun) when it reconnects.
//
// Nothing that was not pre-signed runs: no order, an expired order, an
// order for another agent, or an action outside the allow-list, and
// nothing happens.
package autonomy

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/agent/state"
	"tend.dev/tend/agent/tasks"
	"tend.dev/tend/internal/engine/window"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// Config wires an Autonomy. DB, AgentID, Keys, Run and Offline are
// required.
type Config struct {
	DB      *state.DB
	AgentID string
	// Keys returns the pinned task-signing keys (task.KeyMap).
	Keys func() map[string]ed25519.PublicKey
	// Run runs an action through the allow-list and the plugins
	// (tasks.Runner.RunLocal).
	Run func(ctx context.Context, runID string, o *taskv1.StandingOrder) tasks.LocalResult
	// Offline is how long the control plane has been unreachable (0 while
	// connected).
	Offline func() time.Duration
	// Busy says a task from the control plane is being checked or run;
	// LastTaskEnd when the last one of a policy ended (both optional). The
	// agent never acts alone while the control plane's own task may still
	// be doing the job.
	Busy        func() bool
	LastTaskEnd func(policy string) time.Time
	// Notify wakes the stream: a run report is ready to send.
	Notify func()
	Now    func() time.Time
	Log    *slog.Logger
	// MaxSkew is the clock difference tolerated on an order's validity
	// (default 30s).
	MaxSkew time.Duration
}

// order is one verified standing order and its local state.
type order struct {
	o     *taskv1.StandingOrder
	env   []byte
	rule  window.Counter
	state window.State
	// run in progress or waiting for verification, nil if none.
	run *runState
	// lastEnd: when the last run ended (backoff).
	lastEnd time.Time
	// passes: consecutive passing results; a whole window of them ends a
	// trigger the control plane dealt with.
	passes int
	// unverified: runs for the current failure that did not fix it.
	unverified int
}

type runState struct {
	report   *agentv1.AutonomousRun
	finished time.Time // when the action ended; zero while it runs
	deadline time.Time // verification deadline
}

// Autonomy holds the standing orders and acts on them.
type Autonomy struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	byCheck map[string][]*order     // check id → orders
	last    *agentv1.StandingOrders // the set applied last
	// online: the control plane was reachable at the last result; a
	// failure streak counts only from when it became unreachable.
	online bool
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New loads the stored standing orders; Stop ends runs in progress.
func New(cfg Config) (*Autonomy, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Notify == nil {
		cfg.Notify = func() {}
	}
	if cfg.MaxSkew == 0 {
		cfg.MaxSkew = 30 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Autonomy{cfg: cfg, log: cfg.Log.With("component", "autonomy"), byCheck: map[string][]*order{}, ctx: ctx, cancel: cancel}
	stored, err := cfg.DB.LoadStandingOrders()
	if err != nil {
		return nil, err
	}
	a.set(stored, false)
	return a, nil
}

// Stop cancels runs in progress and waits for them.
func (a *Autonomy) Stop() {
	a.cancel()
	a.wg.Wait()
}

// SetOrders replaces the standing orders with the control plane's new set,
// durably. Orders that do not verify are dropped (and logged); the trigger
// state of a check that keeps an order is kept.
func (a *Autonomy) SetOrders(so *agentv1.StandingOrders) error {
	a.mu.Lock()
	same := a.last != nil && proto.Equal(a.last, so)
	a.mu.Unlock()
	if same {
		return nil // the usual case: still no orders, sent on every connect
	}
	if err := a.cfg.DB.SaveStandingOrders(so); err != nil {
		return err
	}
	a.set(so, true)
	return nil
}

func (a *Autonomy) set(so *agentv1.StandingOrders, logIt bool) {
	keys := a.cfg.Keys()
	now := a.cfg.Now()
	next := map[string][]*order{}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, env := range so.GetEnvelopes() {
		o, err := task.OpenStandingOrder(env, keys)
		if err == nil {
			err = task.CheckOrder(o, a.cfg.AgentID, now, a.cfg.MaxSkew)
		}
		if err != nil {
			a.log.Warn("standing order refused", "err", err)
			continue
		}
		rule, err := orderRule(o)
		if err != nil {
			a.log.Warn("standing order refused", "order", o.GetOrderId(), "policy", o.GetPolicy(), "err", err)
			continue
		}
		// The same policy's order is updated in place: a run in progress
		// (its goroutine holds the *order) and the trigger memory carry on.
		var nu *order
		for _, old := range a.byCheck[o.GetCheckId()] {
			if old.o.GetPolicy() == o.GetPolicy() {
				nu = old
			}
		}
		if nu == nil {
			nu = &order{}
		}
		nu.o, nu.env, nu.rule = o, env, rule
		next[o.GetCheckId()] = append(next[o.GetCheckId()], nu)
	}
	a.byCheck = next
	a.last = so
	if logIt {
		n := 0
		for _, os := range next {
			n += len(os)
		}
		a.log.Info("standing orders updated", "orders", n)
	}
}

// orderRule is the window rule of an order. The agent does not evaluate
// `when` expressions (it does not link CEL, to stay small): policy
// validation refuses an autonomous policy with one, and an order that
// carries one anyway (from an older control plane) is refused here rather
// than run under a broader trigger than its policy says.
func orderRule(o *taskv1.StandingOrder) (window.Counter, error) {
	if strings.TrimSpace(o.GetWhen()) != "" {
		return window.Counter{}, fmt.Errorf("its trigger has a when expression (%q), which agents do not evaluate: remove when from the autonomous policy", o.GetWhen())
	}
	c := window.Counter{Failures: int(o.GetFailures()), Window: int(o.GetWindow()), Flap: window.DefaultFlap}
	if err := c.Validate(); err != nil {
		return window.Counter{}, fmt.Errorf("its trigger is invalid: %w", err)
	}
	return c, nil
}

// Withdraw drops every standing order, durably (the control plane refused
// this agent: it was revoked).
func (a *Autonomy) Withdraw(why string) {
	if a.Orders() == 0 {
		return
	}
	a.log.Warn("standing orders withdrawn", "why", why)
	if err := a.SetOrders(&agentv1.StandingOrders{}); err != nil {
		a.log.Error("cannot withdraw the standing orders", "err", err)
	}
}

// Orders is the number of standing orders held.
func (a *Autonomy) Orders() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, os := range a.byCheck {
		n += len(os)
	}
	return n
}

func newRunID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "auto-" + hex.EncodeToString(b)
}

func event(at time.Time, kind, msg string) *agentv1.AutonomousEvent {
	return &agentv1.AutonomousEvent{At: timestamppb.New(at), Kind: kind, Message: msg}
}

// Observe feeds one local result (called for every result the agent
// produces, connected or not).
func (a *Autonomy) Observe(r *agentv1.CheckResult) {
	a.mu.Lock()
	defer a.mu.Unlock()
	orders := a.byCheck[r.GetCheckId()]
	if len(orders) == 0 {
		return
	}
	now := a.cfg.Now()
	online := a.cfg.Offline() <= 0
	if a.online && !online {
		// Just cut off: what the check did while the control plane was
		// there is the control plane's business (it may have a task on
		// it, a hold, an open breaker). Only a failure seen alone counts.
		for _, os := range a.byCheck {
			for _, o := range os {
				if o.run == nil {
					o.state.ResetAfterVerifiedRecovery()
					o.passes, o.unverified = 0, 0
				}
			}
		}
	}
	a.online = online
	for _, o := range orders {
		d := o.rule.Observe(&o.state, r, now)
		if d.Passed {
			o.passes++
			if o.state.Triggered && o.passes >= o.rule.Window && o.run == nil {
				o.state.ResetAfterVerifiedRecovery()
				o.unverified = 0
			}
		} else {
			o.passes = 0
		}
		if o.run != nil {
			a.followRun(o, r, d, now)
			continue
		}
		if !o.state.Triggered || d.Passed || o.state.Flapping {
			continue
		}
		a.maybeRun(o, d, now)
	}
}

// followRun verifies a finished run: the check passes (a result started
// after the action ended) before the deadline, or not.
func (a *Autonomy) followRun(o *order, r *agentv1.CheckResult, d window.Decision, now time.Time) {
	rs := o.run
	if rs.finished.IsZero() {
		return // still running
	}
	switch {
	case d.Passed && !r.GetStartedAt().AsTime().Before(rs.finished):
		rs.report.Verified = true
		rs.report.VerifiedAt = timestamppb.New(now)
		rs.report.Events = append(rs.report.Events, event(now, "verified",
			fmt.Sprintf("%s passed %s after the action", o.o.GetCheckId(), r.GetStartedAt().AsTime().Sub(rs.finished).Round(time.Millisecond))))
		o.state.ResetAfterVerifiedRecovery()
		o.unverified = 0
		a.log.Info("autonomous remediation verified", "policy", o.o.GetPolicy(), "run", rs.report.GetRunId())
	case now.After(rs.deadline):
		o.unverified++
		rs.report.Events = append(rs.report.Events, event(now, "not_verified",
			fmt.Sprintf("%s did not pass within %s of the action", o.o.GetCheckId(), o.o.GetVerifyWithin().AsDuration())))
		a.log.Warn("autonomous remediation not verified", "policy", o.o.GetPolicy(), "run", rs.report.GetRunId())
	default:
		return
	}
	a.finishRun(o)
}

func (a *Autonomy) finishRun(o *order) {
	if err := a.cfg.DB.PutAutonomousRun(o.run.report); err != nil {
		a.log.Error("cannot store the autonomous run report", "run", o.run.report.GetRunId(), "err", err)
	}
	o.run = nil
	a.cfg.Notify()
}

// budget is the persisted list of run start times of one policy in the
// last hour.
func (a *Autonomy) budget(pol string, now time.Time) ([]time.Time, error) {
	b, err := a.cfg.DB.Get("autonomy_budget/" + pol)
	if err != nil || len(b) == 0 {
		return nil, err
	}
	var all []time.Time
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, fmt.Errorf("autonomy budget of %s: %w", pol, err)
	}
	var in []time.Time
	for _, t := range all {
		if t.After(now) {
			t = now // the clock went back: the start still counts
		}
		if now.Sub(t) < time.Hour {
			in = append(in, t)
		}
	}
	return in, nil
}

// maybeRun starts the order's action if everything allows it now; each
// "no" that matters is logged (not reported: nothing happened).
func (a *Autonomy) maybeRun(o *order, d window.Decision, now time.Time) {
	off := a.cfg.Offline()
	if off <= 0 || off < o.o.GetOfflineAfter().AsDuration() {
		return // connected, or not away long enough: the control plane decides
	}
	if err := a.recheck(o, now); err != nil {
		a.log.Warn("standing order not used", "policy", o.o.GetPolicy(), "err", err)
		return
	}
	if !o.lastEnd.IsZero() && now.Sub(o.lastEnd) < o.o.GetBackoff().AsDuration() {
		return
	}
	if max := o.o.GetMaxAttempts(); max > 0 && o.unverified >= int(max) {
		return // this failure is the control plane's (or a person's) again
	}
	if a.cfg.Busy != nil && a.cfg.Busy() {
		return
	}
	if a.cfg.LastTaskEnd != nil {
		if end := a.cfg.LastTaskEnd(o.o.GetPolicy()); !end.IsZero() && now.Sub(end) < o.o.GetVerifyWithin().AsDuration() {
			return // the control plane's own task may still be taking effect
		}
	}
	starts, err := a.budget(o.o.GetPolicy(), now)
	if err != nil {
		a.log.Error("cannot read the autonomy budget; not acting", "policy", o.o.GetPolicy(), "err", err)
		return
	}
	if len(starts) >= int(o.o.GetMaxPerHour()) {
		a.log.Warn("autonomy budget used up: not acting", "policy", o.o.GetPolicy(), "runs_last_hour", len(starts), "max_per_hour", o.o.GetMaxPerHour())
		return
	}
	// Spend the budget durably before acting: a crash cannot give it back.
	starts = append(starts, now)
	b, _ := json.Marshal(starts)
	if err := a.cfg.DB.Put("autonomy_budget/"+o.o.GetPolicy(), b); err != nil {
		a.log.Error("cannot record the autonomy budget; not acting", "policy", o.o.GetPolicy(), "err", err)
		return
	}
	runID := newRunID()
	rep := &agentv1.AutonomousRun{RunId: runID, OrderEnvelope: o.env, TriggeredAt: timestamppb.New(now)}
	rep.Events = append(rep.Events,
		event(now, "detected", fmt.Sprintf("%s: %s", o.o.GetCheckId(), d.Reason)),
		event(now, "decided", fmt.Sprintf("control plane unreachable for %s (standing order acts after %s); run %d of %d this hour: %s",
			off.Round(time.Second), o.o.GetOfflineAfter().AsDuration(), len(starts), o.o.GetMaxPerHour(), o.o.GetAction())))
	o.run = &runState{report: rep}
	// Stored before running: if the agent dies mid-action, the report of
	// the attempt survives (and is sent as failed, interrupted).
	rep.State = agentv1.TaskState_TASK_STATE_FAILED
	rep.Reason = "interrupted: tend-agent stopped while the action ran"
	if err := a.cfg.DB.PutAutonomousRun(rep); err != nil {
		a.log.Error("cannot store the autonomous run; not acting", "policy", o.o.GetPolicy(), "err", err)
		o.run = nil
		return
	}
	a.log.Warn("control plane unreachable: running a standing order", "policy", o.o.GetPolicy(), "action", o.o.GetAction(), "run", runID, "offline", off.Round(time.Second))
	a.wg.Add(1)
	go a.execute(o, runID)
}

// recheck verifies the order again at the moment of use: the keys may have
// been rotated, and the order may have expired.
func (a *Autonomy) recheck(o *order, now time.Time) error {
	fresh, err := task.OpenStandingOrder(o.env, a.cfg.Keys())
	if err != nil {
		return err
	}
	return task.CheckOrder(fresh, a.cfg.AgentID, now, a.cfg.MaxSkew)
}

func (a *Autonomy) execute(o *order, runID string) {
	defer a.wg.Done()
	started := a.cfg.Now()
	res := a.cfg.Run(a.ctx, runID, o.o)
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	rs := o.run
	if rs == nil || rs.report.GetRunId() != runID {
		return
	}
	rep := rs.report
	rep.State, rep.Output, rep.Reason = res.State, res.Output, res.Reason
	rep.Events = append(rep.Events, event(started, "started", "ran "+o.o.GetAction()))
	o.lastEnd = now
	switch res.State {
	case agentv1.TaskState_TASK_STATE_SUCCEEDED:
		rep.Events = append(rep.Events, event(now, "finished", "succeeded: "+firstLine(res.Output)))
		rs.finished = now
		rs.deadline = now.Add(o.o.GetVerifyWithin().AsDuration())
		rep.Events = append(rep.Events, event(now, "verifying", fmt.Sprintf("waiting up to %s for %s to pass again", o.o.GetVerifyWithin().AsDuration(), o.o.GetCheckId())))
		if err := a.cfg.DB.PutAutonomousRun(rep); err != nil {
			a.log.Error("cannot store the autonomous run report", "run", runID, "err", err)
		}
		a.log.Info("autonomous action succeeded; verifying", "policy", o.o.GetPolicy(), "run", runID)
	case agentv1.TaskState_TASK_STATE_REJECTED:
		o.unverified = int(max(1, o.o.GetMaxAttempts())) // deterministic: never again for this failure
		rep.Events = append(rep.Events, event(now, "rejected", res.Reason))
		a.log.Warn("autonomous action refused", "policy", o.o.GetPolicy(), "run", runID, "reason", res.Reason)
		a.finishRun(o)
	default:
		o.unverified++
		rep.Events = append(rep.Events, event(now, "finished", "failed: "+res.Reason))
		a.log.Warn("autonomous action failed", "policy", o.o.GetPolicy(), "run", runID, "reason", res.Reason)
		a.finishRun(o)
	}
}

// Reports returns the finished run reports waiting for the control plane.
func (a *Autonomy) Reports() ([]*agentv1.AutonomousRun, error) {
	a.mu.Lock() // a run that finishes meanwhile is not half-read
	defer a.mu.Unlock()
	all, err := a.cfg.DB.AutonomousRuns()
	if err != nil {
		return nil, err
	}
	busy := map[string]bool{}
	for _, os := range a.byCheck {
		for _, o := range os {
			if o.run != nil {
				busy[o.run.report.GetRunId()] = true
			}
		}
	}
	var out []*agentv1.AutonomousRun
	for _, r := range all {
		if !busy[r.GetRunId()] {
			out = append(out, r)
		}
	}
	return out, nil
}

// Acked forgets a report the control plane stored.
func (a *Autonomy) Acked(runID string) error { return a.cfg.DB.DeleteAutonomousRun(runID) }

func firstLine(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			s = s[:i]
			break
		}
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
