// Package governor decides whether automation may act now on an incident:
// everything it needs is in an Input (counts, times and limits, gathered
// by the control plane), and it answers with a Decision: act, or not now,
// with the rule that stopped it, a reason with the numbers, and when it is
// worth asking again.
//
// It is pure: no I/O, no goroutines, no clock (Input.Now is the time).
//
// # Rule order
//
// Decide applies the rules in this order and answers with the first that
// says no (Order lists them):
//
//  1. max_attempts: the incident has had all its attempts. Escalate; never
//     retry. First, so an exhausted incident is handed to a person whatever
//     else holds.
//  2. breaker_open: the policy's circuit breaker is open (too many failed
//     verifications); it needs a re-arm by a person. Escalate.
//  3. correlated: a fleet-wide incident is open for this policy (too many
//     of its agents fail at once); no host-by-host remediation. The fleet
//     incident escalates, not this one.
//  4. flapping: the check flaps; remediating again and again does not
//     help. Ask again when it stops.
//     4a. recovering: the check passed its latest result(s); it may be
//     recovering by itself. Ask again at its next failure (a whole window
//     of passes resolves the incident instead).
//  5. cooldown: the last verified recovery of this (agent, policy) was less
//     than `cooldown` ago. Retry when it ends.
//  6. backoff: the previous attempt ended less than backoff·2^(attempts-1)
//     ago. Retry when the wait ends.
//  7. approval_timeout / approval_required: the policy requires approval
//     and the task is not approved: wait (retry at the deadline, if any), or
//     escalate once the deadline has passed. Not applied in shadow mode,
//     where nothing would be approved.
//  8. max_concurrent, then fleet_max_concurrent: tasks in flight of this
//     policy, then of all policies, fleet-wide. Ask again when a task ends.
//  9. max_per_hour, then fleet_max_per_hour: tasks started in the sliding
//     last hour. Retry when the oldest one leaves the hour.
//  10. shadow: everything above allowed it, but the policy is in shadow mode
//     (or an unknown mode): Act is false and Reason says what would have been
//     done.
//
// Terminal rules come first (they escalate; waiting cannot help), then the
// rules about this incident's own timing, then the human gate, then the
// shared budgets (which change fastest and are the cheapest to re-ask), and
// shadow last so a shadow policy records exactly what enforce would do.
//
// A "no" with a zero RetryAt and Escalate false waits for an event, not a
// time: a task ending (max_concurrent), an approval (approval_required
// without a deadline), flapping stopping, a re-arm or the fleet incident
// closing.
package governor

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"tend.dev/tend/internal/policy"
)

// Rules, as Decision.Rule names them.
const (
	RuleMaxAttempts        = "max_attempts"
	RuleBreakerOpen        = "breaker_open"
	RuleCorrelated         = "correlated"
	RuleFlapping           = "flapping"
	RuleRecovering         = "recovering"
	RuleCooldown           = "cooldown"
	RuleBackoff            = "backoff"
	RuleApprovalTimeout    = "approval_timeout"
	RuleApprovalRequired   = "approval_required"
	RuleMaxConcurrent      = "max_concurrent"
	RuleFleetMaxConcurrent = "fleet_max_concurrent"
	RuleMaxPerHour         = "max_per_hour"
	RuleFleetMaxPerHour    = "fleet_max_per_hour"
	RuleShadow             = "shadow"
)

// Order lists the rules in the order Decide applies them.
var Order = []string{
	RuleMaxAttempts, RuleBreakerOpen, RuleCorrelated, RuleFlapping, RuleRecovering,
	RuleCooldown, RuleBackoff, RuleApprovalTimeout, RuleApprovalRequired,
	RuleMaxConcurrent, RuleFleetMaxConcurrent, RuleMaxPerHour, RuleFleetMaxPerHour,
	RuleShadow,
}

// Input is everything Decide looks at. Limits of 0 mean no limit (as in
// the policy), and so does math.MaxInt (what policy.MaxConcurrent.Limit
// returns for no limit). FromPolicy fills the policy's part.
type Input struct {
	// Now is the time of the decision.
	Now time.Time

	// Who and what, for the reasons only; each may be empty.
	Policy string // policy name
	Agent  string // agent name
	Action string // e.g. "process.restart"

	// Mode is the policy's mode: "enforce" (or "") acts; "shadow" records
	// what would be done. Any other value is treated as shadow.
	Mode string

	// RequireApproval: the task needs `tendctl approve task`. Approved: it
	// has it. ApprovalDeadline: when an unapproved task escalates (zero:
	// never).
	RequireApproval  bool
	Approved         bool
	ApprovalDeadline time.Time

	// Attempts already made for this incident, and the most it may have
	// (0 or less: policy.DefaultMaxAttempts, never unbounded).
	Attempts    int
	MaxAttempts int
	// LastAttemptEnd is when the last attempt ended (its task failed, or
	// its verification timed out); zero skips the backoff rule. The wait
	// after attempt n is Backoff·2^(n-1).
	LastAttemptEnd time.Time
	Backoff        time.Duration

	// LastResolved is the last verified recovery of this (agent, policy);
	// zero if none. No new remediation until Cooldown after it.
	LastResolved time.Time
	Cooldown     time.Duration

	// Flapping: the engine reports the check as flapping.
	Flapping bool
	// Passing is how many results in a row passed (0: the latest failed).
	Passing int

	// Running is the number of tasks of this policy in flight fleet-wide;
	// MaxConcurrent the limit already resolved against the matched agents.
	// MaxConcurrentSpec ("10%" or "3") and Matched are for the reason only.
	Running           int
	MaxConcurrent     int
	MaxConcurrentSpec policy.MaxConcurrent
	Matched           int

	// StartedLastHour is the number of tasks of this policy started in the
	// sliding last hour (HourWindow.Count). PerHourFreeAt is when that count
	// next drops below MaxPerHour (HourWindow.FreeAt); zero: Now+1h, the
	// latest it can be.
	StartedLastHour int
	MaxPerHour      int
	PerHourFreeAt   time.Time

	// Fleet-wide budget across all policies (zero: no limit).
	FleetRunning         int
	FleetMaxConcurrent   int
	FleetStartedLastHour int
	FleetMaxPerHour      int
	FleetPerHourFreeAt   time.Time

	// BreakerOpen: the policy's circuit breaker is open; BreakerDetail says
	// why ("3 failed verifications in 1h").
	BreakerOpen   bool
	BreakerDetail string
	// Correlated: a fleet-wide incident is open for this policy;
	// CorrelatedDetail says which and why.
	Correlated       bool
	CorrelatedDetail string
}

// Decision is the governor's answer.
type Decision struct {
	// Act: send the task now.
	Act bool
	// Rule is the rule that said no ("" when Act, RuleShadow in shadow mode).
	Rule string
	// Reason names the rule and the numbers, for the incident's timeline.
	Reason string
	// RetryAt is when it is worth asking again; zero when no time will
	// change the answer (Escalate, or waiting for an event).
	RetryAt time.Time
	// Escalate: automation is done with this incident; tell a person.
	Escalate bool
}

// FromPolicy fills the policy's part of an Input: names, mode, approval,
// attempts, backoff, cooldown, and limits with maxConcurrent resolved
// against matched agents. The caller adds Now and the counts.
func FromPolicy(p *policy.Policy, matched int) Input {
	in := Input{Policy: p.Name(), Mode: p.Spec.Mode, Matched: matched}
	if r := p.Spec.Remediation; r != nil {
		in.Action = r.Action
		in.RequireApproval = r.RequireApproval
		in.MaxAttempts = r.MaxAttempts
		in.Backoff = r.Backoff.D()
		in.Cooldown = r.Cooldown.D()
	}
	if l := p.Spec.Limits; l != nil {
		in.MaxConcurrentSpec = l.MaxConcurrent
		in.MaxConcurrent = ResolveMaxConcurrent(l.MaxConcurrent, matched)
		in.MaxPerHour = l.MaxPerHour
	}
	return in
}

// ResolveMaxConcurrent is the number of tasks that may run at once for a
// maxConcurrent of spec when the policy matches matched agents: the number,
// or the percent of matched rounded up (at least 1); 0 for no limit.
func ResolveMaxConcurrent(spec policy.MaxConcurrent, matched int) int {
	if spec == "" {
		return 0
	}
	return spec.Limit(matched)
}

// BackoffWait is the wait after attempt n (n >= 1): backoff·2^(n-1),
// saturating instead of overflowing.
func BackoffWait(backoff time.Duration, n int) time.Duration {
	if backoff <= 0 || n < 1 {
		return 0
	}
	w := backoff
	for range n - 1 {
		if w > math.MaxInt64/2 {
			return math.MaxInt64
		}
		w *= 2
	}
	return w
}

// Decide says whether automation may act now; see the package comment for
// the rules and their order.
func Decide(in Input) Decision {
	pol := "this policy"
	if in.Policy != "" {
		pol = "policy " + in.Policy
	}
	shadow := in.Mode != policy.ModeEnforce && in.Mode != ""

	maxAttempts := in.MaxAttempts
	if maxAttempts <= 0 {
		maxAttempts = policy.DefaultMaxAttempts
	}
	if in.Attempts >= maxAttempts {
		return Decision{Rule: RuleMaxAttempts, Escalate: true,
			Reason: fmt.Sprintf("max_attempts: %d of %d attempts made and the problem is still there; escalating", in.Attempts, maxAttempts)}
	}

	if in.BreakerOpen {
		return Decision{Rule: RuleBreakerOpen, Escalate: true,
			Reason: "breaker_open: " + pol + " stopped acting" + detail(in.BreakerDetail) + "; re-arm it with tendctl; escalating"}
	}

	if in.Correlated {
		return Decision{Rule: RuleCorrelated,
			Reason: "correlated: a fleet-wide incident is open for " + pol + detail(in.CorrelatedDetail) + "; no host-by-host remediation"}
	}

	if in.Flapping {
		return Decision{Rule: RuleFlapping,
			Reason: "flapping: the check is flapping; no remediation until it stops"}
	}

	if in.Passing > 0 {
		return Decision{Rule: RuleRecovering,
			Reason: fmt.Sprintf("recovering: the check passed its last %d result(s); waiting for a whole window of passes (resolved) or a new failure", in.Passing)}
	}

	if !in.LastResolved.IsZero() && in.Cooldown > 0 {
		if end := in.LastResolved.Add(in.Cooldown); in.Now.Before(end) {
			return Decision{Rule: RuleCooldown, RetryAt: end,
				Reason: fmt.Sprintf("cooldown: last verified recovery %s ago, cooldown %s (%s left)",
					dur(in.Now.Sub(in.LastResolved)), dur(in.Cooldown), dur(end.Sub(in.Now)))}
		}
	}

	if in.Attempts >= 1 && !in.LastAttemptEnd.IsZero() {
		wait := BackoffWait(in.Backoff, in.Attempts)
		if end := in.LastAttemptEnd.Add(wait); in.Now.Before(end) {
			return Decision{Rule: RuleBackoff, RetryAt: end,
				Reason: fmt.Sprintf("backoff: attempt %d ended %s ago; attempt %d waits %s (%s × 2^%d), %s left",
					in.Attempts, dur(in.Now.Sub(in.LastAttemptEnd)), in.Attempts+1, dur(wait), dur(in.Backoff), in.Attempts-1, dur(end.Sub(in.Now)))}
		}
	}

	if in.RequireApproval && !in.Approved && !shadow {
		if !in.ApprovalDeadline.IsZero() && !in.Now.Before(in.ApprovalDeadline) {
			return Decision{Rule: RuleApprovalTimeout, Escalate: true,
				Reason: fmt.Sprintf("approval_timeout: %s requires approval and none came by %s; escalating",
					pol, in.ApprovalDeadline.UTC().Format(time.RFC3339))}
		}
		r := "approval_required: " + pol + " requires approval: waiting for tendctl approve task"
		if !in.ApprovalDeadline.IsZero() {
			r += fmt.Sprintf(" (%s left)", dur(in.ApprovalDeadline.Sub(in.Now)))
		}
		return Decision{Rule: RuleApprovalRequired, RetryAt: in.ApprovalDeadline, Reason: r}
	}

	if limited(in.MaxConcurrent) && in.Running >= in.MaxConcurrent {
		return Decision{Rule: RuleMaxConcurrent,
			Reason: fmt.Sprintf("max_concurrent: %d of %d tasks of %s running fleet-wide (limit %s)",
				in.Running, in.MaxConcurrent, pol, limitText(in))}
	}
	if limited(in.FleetMaxConcurrent) && in.FleetRunning >= in.FleetMaxConcurrent {
		return Decision{Rule: RuleFleetMaxConcurrent,
			Reason: fmt.Sprintf("fleet_max_concurrent: %d of %d remediation tasks running across the fleet (all policies)",
				in.FleetRunning, in.FleetMaxConcurrent)}
	}

	if limited(in.MaxPerHour) && in.StartedLastHour >= in.MaxPerHour {
		at := freeAt(in.Now, in.PerHourFreeAt)
		return Decision{Rule: RuleMaxPerHour, RetryAt: at,
			Reason: fmt.Sprintf("max_per_hour: %d of %d tasks of %s started in the last hour; next slot in %s",
				in.StartedLastHour, in.MaxPerHour, pol, dur(at.Sub(in.Now)))}
	}
	if limited(in.FleetMaxPerHour) && in.FleetStartedLastHour >= in.FleetMaxPerHour {
		at := freeAt(in.Now, in.FleetPerHourFreeAt)
		return Decision{Rule: RuleFleetMaxPerHour, RetryAt: at,
			Reason: fmt.Sprintf("fleet_max_per_hour: %d of %d remediation tasks started across the fleet in the last hour; next slot in %s",
				in.FleetStartedLastHour, in.FleetMaxPerHour, dur(at.Sub(in.Now)))}
	}

	what := whatText(in, maxAttempts)
	if shadow {
		r := "shadow: would " + what
		if in.RequireApproval && !in.Approved {
			r += " after approval"
		}
		if in.Mode == policy.ModeShadow {
			r += "; " + pol + " is in shadow mode, nothing is sent"
		} else {
			r += fmt.Sprintf("; unknown mode %q is treated as shadow, nothing is sent", in.Mode)
		}
		return Decision{Rule: RuleShadow, Reason: r}
	}
	return Decision{Act: true, Reason: what}
}

// whatText is "run process.restart on agent web-1 (attempt 1 of 3)".
func whatText(in Input, maxAttempts int) string {
	var b strings.Builder
	b.WriteString("run ")
	if in.Action != "" {
		b.WriteString(in.Action)
	} else {
		b.WriteString("the remediation")
	}
	if in.Agent != "" {
		b.WriteString(" on agent " + in.Agent)
	}
	fmt.Fprintf(&b, " (attempt %d of %d)", in.Attempts+1, maxAttempts)
	return b.String()
}

// limitText is "10% of 20 agents" or "3".
func limitText(in Input) string {
	s := string(in.MaxConcurrentSpec)
	switch {
	case strings.HasSuffix(s, "%"):
		return fmt.Sprintf("%s of %d agents", s, in.Matched)
	case s != "":
		return s
	default:
		return strconv.Itoa(in.MaxConcurrent)
	}
}

func limited(limit int) bool { return limit > 0 && limit != math.MaxInt }

func detail(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// freeAt is when an hourly budget has room again: the caller's time if it
// knows it and it is ahead, else an hour from now (every start counted is
// gone by then).
func freeAt(now, known time.Time) time.Time {
	if !known.IsZero() && known.After(now) {
		return known
	}
	return now.Add(time.Hour)
}

// dur formats a duration for people: "10m", "1m30s", "250ms", rounded to
// the millisecond below a second and to the second above.
func dur(d time.Duration) string {
	switch {
	case d >= time.Second:
		d = d.Round(time.Second)
	case d > 0:
		d = d.Round(time.Millisecond)
	}
	return policy.Duration(d).String()
}
