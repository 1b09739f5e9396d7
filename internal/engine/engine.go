// Package engine is Tend's trigger engine: per (agent, policy) it takes
// check results in and gives decisions out: healthy, failing, triggered or
// flapping, and whether this result completes the trigger.
//
// It is pure: no I/O, no goroutines, no clock. The caller passes the time,
// keeps one State per (agent, policy), persists it if it wants (State is
// plain data, see state.go) and acts on the Decision.
//
// # What counts as failed
//
// Without `when`, a result counts as failed when its status is CRITICAL;
// WARNING, UNKNOWN (and an unset status, read as unknown) do not count, so
// a flaky or half-broken check never restarts anything by itself.
//
// With `when`, a result counts as failed when its status is not OK and the
// expression is true. The expression sees result.status, so it can widen
// (`result.status != "ok"`: warning and unknown count too) or narrow
// (`result.status == "critical" && result.output.contains("timeout")`) the
// default. An OK result never counts as failed, whatever `when` says: a
// policy cannot make a healthy check a reason to act (`labels.env ==
// "prod"` alone would otherwise remediate every healthy prod host). An
// error while evaluating `when` (a missing metric, the cost limit) counts
// as not failed and is reported in Decision.EvalError and Reason.
//
// A result passed (Decision.Passed, what the verifier waits for) when its
// status is OK. WARNING and UNKNOWN are neither failed nor passed by
// default: they do not trigger and do not prove a recovery.
//
// # Phases
//
//   - healthy: no failed result in the window.
//   - failing: some failed results, fewer than `failures`.
//   - triggered: `failures` of the last `window` failed. Sticky: it stays
//     triggered, whatever the next results are, until the control plane
//     calls State.ResetAfterVerifiedRecovery.
//   - flapping: the check changes state too often (see Flap); reported
//     instead of the others, and while flapping nothing triggers.
//
// Decision.Trigger is true on exactly one result per incident: the one that
// completes the trigger while the state is not already triggered and not
// flapping. If the window still holds enough failures when flapping stops,
// the next result triggers.
package engine

import (
	"context"
	"fmt"
	"strings"

	"tend.dev/tend/internal/engine/window"
	"tend.dev/tend/internal/policy"
	"tend.dev/tend/internal/when"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Phase is the state of one (agent, policy) (see window.Phase).
type Phase = window.Phase

// Phases.
const (
	PhaseHealthy   = window.PhaseHealthy
	PhaseFailing   = window.PhaseFailing
	PhaseTriggered = window.PhaseTriggered
	PhaseFlapping  = window.PhaseFlapping
)

// maxWindow is the largest window a State holds (its bitset's size).
const maxWindow = window.MaxWindow

// Flap holds the flap-detection thresholds (see window.Flap).
type Flap = window.Flap

// DefaultFlap are the thresholds Compile sets (see window.DefaultFlap).
var DefaultFlap = window.DefaultFlap

// Rule is a compiled policy trigger. It is immutable after Compile (set
// Flap before first use) and safe for concurrent use; a State is not.
type Rule struct {
	// Policy and Version name the policy the rule was compiled from.
	Policy  string
	Version uint64
	// Failures of the last Window results must fail to trigger.
	Failures int
	Window   int
	// When is the CEL expression, "" when none.
	When string
	// Flap thresholds; DefaultFlap unless changed.
	Flap Flap

	prog *when.Program
}

// ValidateWhen reports whether expr is a valid `when` expression (blank is
// valid: no expression). The error names the expression and says what is
// wrong and where, on one line, so the caller can prefix the field:
// "spec.trigger.when: invalid expression ...".
//
// internal/policy cannot import this package (it imports internal/policy);
// it can call tend.dev/tend/internal/when.Validate, which this
// function is.
func ValidateWhen(expr string) error { return when.Validate(expr) }

// Compile builds the rule of a policy: its trigger's failures and window,
// and its `when` expression compiled once.
func Compile(p *policy.Policy) (*Rule, error) {
	if p == nil {
		return nil, fmt.Errorf("compile trigger: nil policy")
	}
	t := p.Spec.Trigger
	r := &Rule{
		Policy:   p.Name(),
		Version:  p.Version,
		Failures: t.Failures,
		Window:   t.Window,
		Flap:     DefaultFlap,
	}
	// A stored policy has been validated; these guard the bitset anyway.
	switch {
	case t.Window < 1 || t.Window > min(policy.MaxWindow, maxWindow):
		return nil, fmt.Errorf("policy %s: spec.trigger.window: must be from 1 to %d, got %d", r.Policy, min(policy.MaxWindow, maxWindow), t.Window)
	case t.Failures < 1 || t.Failures > t.Window:
		return nil, fmt.Errorf("policy %s: spec.trigger.failures: must be from 1 to the window (%d), got %d", r.Policy, t.Window, t.Failures)
	}
	if strings.TrimSpace(t.When) != "" {
		prog, err := when.Compile(t.When)
		if err != nil {
			return nil, fmt.Errorf("policy %s: spec.trigger.when: %w", r.Policy, err)
		}
		r.When, r.prog = t.When, prog
	}
	return r, nil
}

// Classify says whether one result counts as failed under the rule and
// whether it passed (status OK), without touching any state. evalErr is
// the error of the `when` expression, if any (failed is then false).
func (r *Rule) Classify(ctx context.Context, res *agentv1.CheckResult, labels map[string]string) (failed, passed bool, evalErr error) {
	st := res.GetStatus()
	switch {
	case st == agentv1.CheckStatus_CHECK_STATUS_OK:
		return false, true, nil
	case r.prog == nil:
		failed, _ = window.Classify(st)
		return failed, false, nil
	}
	failed, evalErr = r.prog.Eval(ctx, when.Input{
		Status:  StatusName(st),
		Output:  res.GetOutput(),
		Metrics: res.GetMetrics(),
		Labels:  labels,
	})
	return failed, false, evalErr
}

// StatusName is the name `when` sees for a status: "ok", "warning",
// "critical" or "unknown" (also for an unset or unrecognised status).
func StatusName(st agentv1.CheckStatus) string {
	switch st {
	case agentv1.CheckStatus_CHECK_STATUS_OK:
		return "ok"
	case agentv1.CheckStatus_CHECK_STATUS_WARNING:
		return "warning"
	case agentv1.CheckStatus_CHECK_STATUS_CRITICAL:
		return "critical"
	default:
		return "unknown"
	}
}
