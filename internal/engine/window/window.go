// Package window is the pure part of Tend's trigger engine: the sliding
// window of failed results ("failures of the last window failed"), the
// sticky trigger and flap detection. It has no expression language: the
// caller says whether each result counted as failed and whether it passed.
//
// The control plane's engine (tend.dev/tend/internal/engine) classifies
// results with a policy's CEL `when` expression and counts them here; the
// agent counts its standing orders here with the default classification
// (Classify), so the agent binary does not link CEL.
package window

import (
	"fmt"
	"strconv"
	"time"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Phase is the state of one (agent, policy).
type Phase string

// Phases.
const (
	PhaseHealthy   Phase = "healthy"
	PhaseFailing   Phase = "failing"
	PhaseTriggered Phase = "triggered"
	PhaseFlapping  Phase = "flapping"
)

// MaxWindow is the largest window a State holds (its bitset's size).
const MaxWindow = 128

// maxWindow is MaxWindow for the bit arithmetic.
const maxWindow = MaxWindow

// Flap holds the flap-detection thresholds: percent state change over the
// last FlapHistory results (weighted as Nagios does, 0.75 for the oldest
// change to 1.25 for the newest). Flapping starts when the percent is above
// High and stops when it is below Low; between the two the state keeps what
// it was (hysteresis). High <= 0 turns flap detection off.
type Flap struct {
	High float64 `json:"high"`
	Low  float64 `json:"low"`
}

// DefaultFlap: start above 50%, stop below 25%. With 21 results, 50% is
// about ten changes (a check that fails and recovers every other result,
// or three remediation cycles that do not hold); 25% about five.
var DefaultFlap = Flap{High: 50, Low: 25}

// Counter is a trigger's window rule: Failures of the last Window results
// must fail to trigger. It is plain data, safe for concurrent use; a
// State is not.
type Counter struct {
	Failures int
	Window   int
	Flap     Flap
}

// Validate checks the window bounds (the State's bitset holds MaxWindow
// results).
func (c Counter) Validate() error {
	switch {
	case c.Window < 1 || c.Window > MaxWindow:
		return fmt.Errorf("window: must be from 1 to %d, got %d", MaxWindow, c.Window)
	case c.Failures < 1 || c.Failures > c.Window:
		return fmt.Errorf("failures: must be from 1 to the window (%d), got %d", c.Window, c.Failures)
	}
	return nil
}

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

// Classify is the classification without a `when` expression: a result
// failed when its status is CRITICAL and passed when it is OK; WARNING and
// UNKNOWN are neither.
func Classify(st agentv1.CheckStatus) (failed, passed bool) {
	return st == agentv1.CheckStatus_CHECK_STATUS_CRITICAL, st == agentv1.CheckStatus_CHECK_STATUS_OK
}

// Observe feeds one result into s with the default classification
// (Classify) and returns the decision; now is the time it was observed.
func (c *Counter) Observe(s *State, res *agentv1.CheckResult, now time.Time) Decision {
	if d, skip := c.Skip(s, res); skip {
		return d
	}
	failed, passed := Classify(res.GetStatus())
	return c.Step(s, res.GetSeq(), failed, passed, nil, now)
}

// Skip reports whether res is not to be evaluated (nil, or its seq is not
// above the last seen) and the decision to return for it; the state does
// not change.
func (c *Counter) Skip(s *State, res *agentv1.CheckResult) (Decision, bool) {
	prev := s.CurrentPhase()
	if res == nil {
		return Decision{Phase: prev, Flapping: s.Flapping, Ignored: true, Results: s.results(c.Window), Failures: s.failures(c.Window), Reason: "ignored: no result"}, true
	}
	if res.GetSeq() <= s.LastSeq {
		return Decision{
			Phase: prev, Flapping: s.Flapping, Ignored: true, Results: s.results(c.Window), Failures: s.failures(c.Window),
			Reason: fmt.Sprintf("ignored: result seq %d is not above the last seen seq %d", res.GetSeq(), s.LastSeq),
		}, true
	}
	return Decision{}, false
}

// Step counts one classified result (seq above s.LastSeq, see Skip) into
// s: failed and passed as classified, evalErr the classification's error
// (the result then counts as not failed). now is the time it was observed.
func (c *Counter) Step(s *State, seq uint64, failed, passed bool, evalErr error, now time.Time) Decision {
	prev := s.CurrentPhase()
	s.LastSeq, s.LastAt = seq, now
	s.push(failed)
	s.pushHistory(failed)

	d := Decision{Failed: failed, Passed: passed, FlapPercent: s.FlapPercent()}
	wasFlapping := s.Flapping
	switch {
	case c.Flap.High <= 0:
		s.Flapping = false
	case !s.Flapping && d.FlapPercent > c.Flap.High:
		s.Flapping = true
	case s.Flapping && d.FlapPercent < c.Flap.Low:
		s.Flapping = false
	}
	d.Flapping = s.Flapping
	d.Failures, d.Results = s.failures(c.Window), s.results(c.Window)
	if !s.Triggered && !s.Flapping && d.Failures >= c.Failures {
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
	d.Reason = c.reason(s, &d, wasFlapping)
	return d
}

// reason explains a decision in one line. It appends into one buffer (one
// allocation) since it runs for every result.
func (c *Counter) reason(s *State, d *Decision, wasFlapping bool) string {
	var buf [192]byte
	b := buf[:0]
	switch {
	case d.Flapping && !wasFlapping:
		b = append(b, "flapping started: "...)
		b = appendPercent(b, d.FlapPercent)
		b = append(b, " state change over the last "...)
		b = strconv.AppendInt(b, FlapHistory, 10)
		b = append(b, " results (above "...)
		b = appendPercent(b, c.Flap.High)
		b = append(b, ")"...)
	case d.Flapping:
		b = append(b, "flapping: "...)
		b = appendPercent(b, d.FlapPercent)
		b = append(b, " state change (stops below "...)
		b = appendPercent(b, c.Flap.Low)
		b = append(b, ")"...)
	case wasFlapping:
		b = append(b, "flapping stopped: "...)
		b = appendPercent(b, d.FlapPercent)
		b = append(b, " state change (below "...)
		b = appendPercent(b, c.Flap.Low)
		b = append(b, "); "...)
	}
	switch {
	case d.Flapping:
		b = append(b, "; "...)
		b = appendCount(b, d)
		if !s.Triggered && d.Failures >= c.Failures {
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
		b = strconv.AppendInt(b, int64(c.Failures), 10)
		b = append(b, " of "...)
		b = strconv.AppendInt(b, int64(c.Window), 10)
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
