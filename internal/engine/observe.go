package engine

import (
	"context"
	"fmt"
	"strconv"
	"time"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Decision is what the engine concludes from one result.
type Decision struct {
	// Phase after this result.
	Phase Phase
	// Changed is true when this result changed the phase.
	Changed bool
	// Trigger is true exactly when this result completes the trigger
	// (`failures` of the last `window` failed) and the state was neither
	// triggered nor flapping: open an incident.
	Trigger bool
	// Flapping is true while the check flaps; FlapPercent is the weighted
	// percent state change over the last FlapHistory results.
	Flapping    bool
	FlapPercent float64
	// Failed: this result counted as failed. Passed: its status is OK (what
	// the verifier waits for). A WARNING or UNKNOWN result is usually
	// neither.
	Failed bool
	Passed bool
	// Failures of the last Results results in the window failed.
	Failures int
	Results  int
	// Ignored: the result was not evaluated (its seq is not above the last
	// seen, or it is nil); the state did not change.
	Ignored bool
	// EvalError is the `when` evaluation error, "" if none. The result then
	// counted as not failed.
	EvalError string
	// Reason says why, for people: "3 of the last 5 results failed".
	Reason string
}

// Observe feeds one result of the rule's check on one agent into its state
// and returns the decision. labels are the agent's labels (for `when`);
// now is the time the control plane received the result.
func (r *Rule) Observe(s *State, res *agentv1.CheckResult, labels map[string]string, now time.Time) Decision {
	return r.ObserveContext(context.Background(), s, res, labels, now)
}

// ObserveContext is Observe with a context that can interrupt a long `when`
// evaluation (it is bounded by the CEL cost limit in any case).
func (r *Rule) ObserveContext(ctx context.Context, s *State, res *agentv1.CheckResult, labels map[string]string, now time.Time) Decision {
	prev := s.CurrentPhase()
	if res == nil {
		return Decision{Phase: prev, Flapping: s.Flapping, Ignored: true, Results: s.results(r.Window), Failures: s.failures(r.Window), Reason: "ignored: no result"}
	}
	if res.GetSeq() <= s.LastSeq {
		return Decision{
			Phase: prev, Flapping: s.Flapping, Ignored: true, Results: s.results(r.Window), Failures: s.failures(r.Window),
			Reason: fmt.Sprintf("ignored: result seq %d is not above the last seen seq %d", res.GetSeq(), s.LastSeq),
		}
	}
	s.LastSeq, s.LastAt = res.GetSeq(), now

	failed, passed, evalErr := r.Classify(ctx, res, labels)
	s.push(failed)
	s.pushHistory(failed)

	d := Decision{Failed: failed, Passed: passed, FlapPercent: s.FlapPercent()}
	wasFlapping := s.Flapping
	switch {
	case r.Flap.High <= 0:
		s.Flapping = false
	case !s.Flapping && d.FlapPercent > r.Flap.High:
		s.Flapping = true
	case s.Flapping && d.FlapPercent < r.Flap.Low:
		s.Flapping = false
	}
	d.Flapping = s.Flapping
	d.Failures, d.Results = s.failures(r.Window), s.results(r.Window)
	if !s.Triggered && !s.Flapping && d.Failures >= r.Failures {
		s.Triggered, d.Trigger = true, true
	}

	switch {
	case s.Flapping:
		d.Phase = PhaseFlapping
	case s.Triggered:
		d.Phase = PhaseTriggered
	case d.Failures > 0:
		d.Phase = PhaseFailing
	default:
		d.Phase = PhaseHealthy
	}
	if d.Phase != prev {
		s.Phase, s.Since, d.Changed = d.Phase, now, true
	}
	if evalErr != nil {
		d.EvalError = evalErr.Error()
	}
	d.Reason = r.reason(s, &d, wasFlapping)
	return d
}

// reason explains a decision in one line. It appends into one buffer (one
// allocation) since it runs for every result.
func (r *Rule) reason(s *State, d *Decision, wasFlapping bool) string {
	var buf [192]byte
	b := buf[:0]
	switch {
	case d.Flapping && !wasFlapping:
		b = append(b, "flapping started: "...)
		b = appendPercent(b, d.FlapPercent)
		b = append(b, " state change over the last "...)
		b = strconv.AppendInt(b, FlapHistory, 10)
		b = append(b, " results (above "...)
		b = appendPercent(b, r.Flap.High)
		b = append(b, ")"...)
	case d.Flapping:
		b = append(b, "flapping: "...)
		b = appendPercent(b, d.FlapPercent)
		b = append(b, " state change (stops below "...)
		b = appendPercent(b, r.Flap.Low)
		b = append(b, ")"...)
	case wasFlapping:
		b = append(b, "flapping stopped: "...)
		b = appendPercent(b, d.FlapPercent)
		b = append(b, " state change (below "...)
		b = appendPercent(b, r.Flap.Low)
		b = append(b, "); "...)
	}
	switch {
	case d.Flapping:
		b = append(b, "; "...)
		b = appendCount(b, d)
		if !s.Triggered && d.Failures >= r.Failures {
			b = append(b, ", not triggering while flapping"...)
		}
	case s.Triggered && !d.Trigger:
		b = append(b, "triggered, waiting for a verified recovery: this result "...)
		if d.Passed {
			b = append(b, "passed; "...)
		} else {
			b = append(b, "did not pass; "...)
		}
		b = appendCount(b, d)
	default:
		b = appendCount(b, d)
		b = append(b, " (trigger: "...)
		b = strconv.AppendInt(b, int64(r.Failures), 10)
		b = append(b, " of "...)
		b = strconv.AppendInt(b, int64(r.Window), 10)
		b = append(b, ")"...)
	}
	if d.EvalError != "" {
		b = append(b, "; counted as not failed: "...)
		b = append(b, d.EvalError...)
	}
	return string(b)
}

// appendCount appends "3 of the last 5 results failed".
func appendCount(b []byte, d *Decision) []byte {
	b = strconv.AppendInt(b, int64(d.Failures), 10)
	b = append(b, " of the last "...)
	b = strconv.AppendInt(b, int64(d.Results), 10)
	return append(b, " results failed"...)
}

// appendPercent appends a percent rounded to a whole number: "62%".
func appendPercent(b []byte, p float64) []byte {
	b = strconv.AppendFloat(b, p, 'f', 0, 64)
	return append(b, '%')
}
