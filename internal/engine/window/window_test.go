package window

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

func TestFlapPercent(t *testing.T) {
	tests := []struct {
		name    string
		history string // oldest first, 1 = failed
		want    float64
	}{
		{"empty", "", 0},
		{"one result", "1", 0},
		{"steady failed", strings.Repeat("1", 21), 0},
		{"steady passed", strings.Repeat("0", 21), 0},
		{"one change, newest (weight 1.25)", strings.Repeat("0", 20) + "1", 6.25},
		{"one change, oldest (weight 0.75)", "0" + strings.Repeat("1", 20), 3.75},
		{"alternating 21", "101010101010101010101", 100},
		{"a short history counts the rest as unchanged", "01", 6.25},
		{"older results than 21 are forgotten", "0" + strings.Repeat("1", 21), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s State
			for _, c := range tt.history {
				s.pushHistory(c == '1')
			}
			require.InDelta(t, tt.want, s.FlapPercent(), 1e-9)
		})
	}
}

// TestObserveDefaultClassification: without `when`, CRITICAL fails, OK
// passes, WARNING and UNKNOWN are neither; the trigger is sticky and
// fires once; an old seq is ignored.
func TestObserveDefaultClassification(t *testing.T) {
	c := Counter{Failures: 2, Window: 3, Flap: DefaultFlap}
	require.NoError(t, c.Validate())
	var s State
	now := time.Unix(1000, 0)
	st := func(seq uint64, status agentv1.CheckStatus) Decision {
		return c.Observe(&s, &agentv1.CheckResult{Seq: seq, Status: status}, now.Add(time.Duration(seq)*time.Second))
	}
	crit, ok, warn := agentv1.CheckStatus_CHECK_STATUS_CRITICAL, agentv1.CheckStatus_CHECK_STATUS_OK, agentv1.CheckStatus_CHECK_STATUS_WARNING
	d := st(1, ok)
	require.True(t, d.Passed)
	require.Equal(t, PhaseHealthy, d.Phase)
	d = st(2, warn)
	require.False(t, d.Failed)
	require.False(t, d.Passed)
	d = st(3, crit)
	require.True(t, d.Failed)
	require.Equal(t, PhaseFailing, d.Phase)
	require.False(t, d.Trigger)
	d = st(4, crit)
	require.True(t, d.Trigger)
	require.Equal(t, PhaseTriggered, d.Phase)
	require.Equal(t, "2 of the last 3 results failed (trigger: 2 of 3)", d.Reason)
	d = st(5, crit)
	require.False(t, d.Trigger, "the trigger fires once per incident")
	d = st(5, ok)
	require.True(t, d.Ignored)
	s.ResetAfterVerifiedRecovery()
	require.Equal(t, PhaseHealthy, s.CurrentPhase())

	require.Error(t, Counter{Failures: 1, Window: MaxWindow + 1}.Validate())
	require.Error(t, Counter{Failures: 4, Window: 3}.Validate())
}
