package engine

import (
	"context"
	"time"

	"tend.dev/tend/internal/engine/window"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Decision is what the engine concludes from one result (see
// window.Decision).
type Decision = window.Decision

// State is what the engine remembers of one (agent, policy) (see
// window.State).
type State = window.State

// FlapHistory is how many results flap detection looks at.
const FlapHistory = window.FlapHistory

// counter is the rule's window part.
func (r *Rule) counter() window.Counter {
	return window.Counter{Failures: r.Failures, Window: r.Window, Flap: r.Flap}
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
	c := r.counter()
	if d, skip := c.Skip(s, res); skip {
		return d
	}
	failed, passed, evalErr := r.Classify(ctx, res, labels)
	return c.Step(s, res.GetSeq(), failed, passed, evalErr, now)
}
