package governor

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/internal/policy"
)

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// base is an input every rule allows.
func base() Input {
	return Input{
		Now: now, Policy: "web", Agent: "web-1", Action: "process.restart", Mode: policy.ModeEnforce,
		MaxAttempts: 3, Backoff: 30 * time.Second, Cooldown: 10 * time.Minute,
		MaxConcurrent: 2, MaxConcurrentSpec: "10%", Matched: 20, MaxPerHour: 20,
	}
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name string
		in   func(in *Input)
		want Decision
	}{
		{
			name: "everything allows: act",
			in:   func(in *Input) {},
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 1 of 3)"},
		},
		{
			name: "max_attempts escalates",
			in:   func(in *Input) { in.Attempts = 3; in.LastAttemptEnd = now.Add(-time.Second) },
			want: Decision{Rule: RuleMaxAttempts, Escalate: true, Reason: "max_attempts: 3 of 3 attempts made and the problem is still there; escalating"},
		},
		{
			name: "max_attempts unset is the default, never unbounded",
			in:   func(in *Input) { in.Attempts = 3; in.MaxAttempts = 0 },
			want: Decision{Rule: RuleMaxAttempts, Escalate: true, Reason: "max_attempts: 3 of 3 attempts made and the problem is still there; escalating"},
		},
		{
			name: "last attempt allowed",
			in:   func(in *Input) { in.Attempts = 2; in.LastAttemptEnd = now.Add(-time.Hour) },
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 3 of 3)"},
		},
		{
			name: "breaker_open escalates",
			in:   func(in *Input) { in.BreakerOpen = true; in.BreakerDetail = "3 failed verifications in 1h" },
			want: Decision{Rule: RuleBreakerOpen, Escalate: true, Reason: "breaker_open: policy web stopped acting (3 failed verifications in 1h); re-arm it with tendctl; escalating"},
		},
		{
			name: "correlated suppresses without escalating this incident",
			in:   func(in *Input) { in.Correlated = true; in.CorrelatedDetail = "12 of 20 agents failing" },
			want: Decision{Rule: RuleCorrelated, Reason: "correlated: a fleet-wide incident is open for policy web (12 of 20 agents failing); no host-by-host remediation"},
		},
		{
			name: "flapping waits",
			in:   func(in *Input) { in.Flapping = true },
			want: Decision{Rule: RuleFlapping, Reason: "flapping: the check is flapping; no remediation until it stops"},
		},
		{
			name: "cooldown",
			in:   func(in *Input) { in.LastResolved = now.Add(-2 * time.Minute) },
			want: Decision{Rule: RuleCooldown, RetryAt: now.Add(8 * time.Minute), Reason: "cooldown: last verified recovery 2m ago, cooldown 10m (8m left)"},
		},
		{
			name: "cooldown over exactly at its end",
			in:   func(in *Input) { in.LastResolved = now.Add(-10 * time.Minute) },
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 1 of 3)"},
		},
		{
			name: "cooldown 0",
			in:   func(in *Input) { in.LastResolved = now.Add(-time.Second); in.Cooldown = 0 },
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 1 of 3)"},
		},
		{
			name: "backoff after attempt 1: backoff",
			in:   func(in *Input) { in.Attempts = 1; in.LastAttemptEnd = now.Add(-10 * time.Second) },
			want: Decision{Rule: RuleBackoff, RetryAt: now.Add(20 * time.Second), Reason: "backoff: attempt 1 ended 10s ago; attempt 2 waits 30s (30s × 2^0), 20s left"},
		},
		{
			name: "backoff after attempt 2: doubled",
			in:   func(in *Input) { in.Attempts = 2; in.LastAttemptEnd = now.Add(-10 * time.Second) },
			want: Decision{Rule: RuleBackoff, RetryAt: now.Add(50 * time.Second), Reason: "backoff: attempt 2 ended 10s ago; attempt 3 waits 1m (30s × 2^1), 50s left"},
		},
		{
			name: "backoff after attempt 4: 8x",
			in: func(in *Input) {
				in.MaxAttempts = 10
				in.Attempts = 4
				in.LastAttemptEnd = now.Add(-time.Minute)
			},
			want: Decision{Rule: RuleBackoff, RetryAt: now.Add(3 * time.Minute), Reason: "backoff: attempt 4 ended 1m ago; attempt 5 waits 4m (30s × 2^3), 3m left"},
		},
		{
			name: "backoff over",
			in:   func(in *Input) { in.Attempts = 2; in.LastAttemptEnd = now.Add(-time.Minute) },
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 3 of 3)"},
		},
		{
			name: "backoff without an end time is skipped",
			in:   func(in *Input) { in.Attempts = 1 },
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 2 of 3)"},
		},
		{
			name: "approval required, no deadline: wait for the approval",
			in:   func(in *Input) { in.RequireApproval = true },
			want: Decision{Rule: RuleApprovalRequired, Reason: "approval_required: policy web requires approval: waiting for tendctl approve task"},
		},
		{
			name: "approval required, deadline: retry at the deadline",
			in:   func(in *Input) { in.RequireApproval = true; in.ApprovalDeadline = now.Add(15 * time.Minute) },
			want: Decision{Rule: RuleApprovalRequired, RetryAt: now.Add(15 * time.Minute), Reason: "approval_required: policy web requires approval: waiting for tendctl approve task (15m left)"},
		},
		{
			name: "approval timed out escalates",
			in:   func(in *Input) { in.RequireApproval = true; in.ApprovalDeadline = now },
			want: Decision{Rule: RuleApprovalTimeout, Escalate: true, Reason: "approval_timeout: policy web requires approval and none came by 2026-03-01T12:00:00Z; escalating"},
		},
		{
			name: "approved",
			in:   func(in *Input) { in.RequireApproval = true; in.Approved = true; in.ApprovalDeadline = now },
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 1 of 3)"},
		},
		{
			name: "max_concurrent percent",
			in:   func(in *Input) { in.Running = 2 },
			want: Decision{Rule: RuleMaxConcurrent, Reason: "max_concurrent: 2 of 2 tasks of policy web running fleet-wide (limit 10% of 20 agents)"},
		},
		{
			name: "max_concurrent number",
			in:   func(in *Input) { in.Running = 3; in.MaxConcurrent = 3; in.MaxConcurrentSpec = "3" },
			want: Decision{Rule: RuleMaxConcurrent, Reason: "max_concurrent: 3 of 3 tasks of policy web running fleet-wide (limit 3)"},
		},
		{
			name: "max_concurrent without spec or names",
			in: func(in *Input) {
				in.Running, in.MaxConcurrent, in.MaxConcurrentSpec, in.Policy = 1, 1, "", ""
			},
			want: Decision{Rule: RuleMaxConcurrent, Reason: "max_concurrent: 1 of 1 tasks of this policy running fleet-wide (limit 1)"},
		},
		{
			name: "max_concurrent: one slot left",
			in:   func(in *Input) { in.Running = 1 },
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 1 of 3)"},
		},
		{
			name: "max_concurrent unlimited (policy.MaxConcurrent.Limit of \"\")",
			in:   func(in *Input) { in.Running = 1000; in.MaxConcurrent = math.MaxInt },
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 1 of 3)"},
		},
		{
			name: "max_concurrent 0 is no limit",
			in:   func(in *Input) { in.Running = 1000; in.MaxConcurrent = 0 },
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 1 of 3)"},
		},
		{
			name: "fleet_max_concurrent",
			in:   func(in *Input) { in.FleetRunning = 50; in.FleetMaxConcurrent = 50 },
			want: Decision{Rule: RuleFleetMaxConcurrent, Reason: "fleet_max_concurrent: 50 of 50 remediation tasks running across the fleet (all policies)"},
		},
		{
			name: "max_per_hour with the window's free time",
			in:   func(in *Input) { in.StartedLastHour = 20; in.PerHourFreeAt = now.Add(5 * time.Minute) },
			want: Decision{Rule: RuleMaxPerHour, RetryAt: now.Add(5 * time.Minute), Reason: "max_per_hour: 20 of 20 tasks of policy web started in the last hour; next slot in 5m"},
		},
		{
			name: "max_per_hour without it: an hour from now",
			in:   func(in *Input) { in.StartedLastHour = 21 },
			want: Decision{Rule: RuleMaxPerHour, RetryAt: now.Add(time.Hour), Reason: "max_per_hour: 21 of 20 tasks of policy web started in the last hour; next slot in 1h"},
		},
		{
			name: "max_per_hour 0 is no limit",
			in:   func(in *Input) { in.StartedLastHour = 500; in.MaxPerHour = 0 },
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 1 of 3)"},
		},
		{
			name: "fleet_max_per_hour",
			in: func(in *Input) {
				in.FleetStartedLastHour, in.FleetMaxPerHour, in.FleetPerHourFreeAt = 200, 200, now.Add(90*time.Second)
			},
			want: Decision{Rule: RuleFleetMaxPerHour, RetryAt: now.Add(90 * time.Second), Reason: "fleet_max_per_hour: 200 of 200 remediation tasks started across the fleet in the last hour; next slot in 1m30s"},
		},
		{
			name: "shadow records what it would do",
			in:   func(in *Input) { in.Mode = policy.ModeShadow },
			want: Decision{Rule: RuleShadow, Reason: "shadow: would run process.restart on agent web-1 (attempt 1 of 3); policy web is in shadow mode, nothing is sent"},
		},
		{
			name: "shadow skips approval and says so",
			in:   func(in *Input) { in.Mode = policy.ModeShadow; in.RequireApproval = true },
			want: Decision{Rule: RuleShadow, Reason: "shadow: would run process.restart on agent web-1 (attempt 1 of 3) after approval; policy web is in shadow mode, nothing is sent"},
		},
		{
			name: "shadow still applies the budgets before it",
			in:   func(in *Input) { in.Mode = policy.ModeShadow; in.Running = 2 },
			want: Decision{Rule: RuleMaxConcurrent, Reason: "max_concurrent: 2 of 2 tasks of policy web running fleet-wide (limit 10% of 20 agents)"},
		},
		{
			name: "unknown mode is shadow",
			in:   func(in *Input) { in.Mode = "enforced" },
			want: Decision{Rule: RuleShadow, Reason: `shadow: would run process.restart on agent web-1 (attempt 1 of 3); unknown mode "enforced" is treated as shadow, nothing is sent`},
		},
		{
			name: "empty mode is enforce",
			in:   func(in *Input) { in.Mode = "" },
			want: Decision{Act: true, Reason: "run process.restart on agent web-1 (attempt 1 of 3)"},
		},
		{
			name: "no names",
			in:   func(in *Input) { in.Agent, in.Action, in.Policy = "", "", "" },
			want: Decision{Act: true, Reason: "run the remediation (attempt 1 of 3)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := base()
			tt.in(&in)
			require.Equal(t, tt.want, Decide(in))
		})
	}
}

// TestDecideOrder blocks every rule at once, then lifts them one by one:
// each time the first still blocking rule of Order answers.
func TestDecideOrder(t *testing.T) {
	in := base()
	in.Attempts, in.MaxAttempts = 3, 3
	in.BreakerOpen = true
	in.Correlated = true
	in.Flapping = true
	in.Passing = 1
	in.LastResolved = now.Add(-time.Minute)
	in.LastAttemptEnd = now.Add(-time.Second)
	in.RequireApproval, in.ApprovalDeadline = true, now.Add(-time.Second)
	in.Running = 2
	in.FleetRunning, in.FleetMaxConcurrent = 5, 5
	in.StartedLastHour = 20
	in.FleetStartedLastHour, in.FleetMaxPerHour = 9, 9

	lift := map[string]func(in *Input){
		RuleMaxAttempts: func(in *Input) { in.MaxAttempts = 5 },
		RuleBreakerOpen: func(in *Input) { in.BreakerOpen = false },
		RuleCorrelated:  func(in *Input) { in.Correlated = false },
		RuleFlapping:    func(in *Input) { in.Flapping = false },
		RuleRecovering:  func(in *Input) { in.Passing = 0 },
		RuleCooldown:    func(in *Input) { in.LastResolved = time.Time{} },
		RuleBackoff:     func(in *Input) { in.LastAttemptEnd = time.Time{} },
		// Approval is skipped in shadow mode: test it in enforce mode
		// until the shadow rule's turn.
		RuleApprovalTimeout:    func(in *Input) { in.ApprovalDeadline = now.Add(time.Hour) },
		RuleApprovalRequired:   func(in *Input) { in.Approved = true },
		RuleMaxConcurrent:      func(in *Input) { in.Running = 0 },
		RuleFleetMaxConcurrent: func(in *Input) { in.FleetRunning = 0 },
		RuleMaxPerHour:         func(in *Input) { in.StartedLastHour = 0 },
		RuleFleetMaxPerHour:    func(in *Input) { in.FleetStartedLastHour = 0; in.Mode = policy.ModeShadow },
		RuleShadow:             func(in *Input) { in.Mode = policy.ModeEnforce },
	}
	require.Len(t, lift, len(Order))
	for _, rule := range Order {
		d := Decide(in)
		require.False(t, d.Act, "rule %s", rule)
		require.Equal(t, rule, d.Rule)
		require.Contains(t, d.Reason, rule+":")
		lift[rule](&in)
	}
	d := Decide(in)
	require.True(t, d.Act)
	require.Equal(t, "", d.Rule)
}

func TestDecideEscalateAndRetry(t *testing.T) {
	// Every rule's promise about Escalate and RetryAt.
	tests := []struct {
		rule     string
		escalate bool
		retry    bool // RetryAt set
		in       func(in *Input)
	}{
		{RuleMaxAttempts, true, false, func(in *Input) { in.Attempts = 3 }},
		{RuleBreakerOpen, true, false, func(in *Input) { in.BreakerOpen = true }},
		{RuleCorrelated, false, false, func(in *Input) { in.Correlated = true }},
		{RuleFlapping, false, false, func(in *Input) { in.Flapping = true }},
		{RuleRecovering, false, false, func(in *Input) { in.Passing = 2 }},
		{RuleCooldown, false, true, func(in *Input) { in.LastResolved = now }},
		{RuleBackoff, false, true, func(in *Input) { in.Attempts, in.LastAttemptEnd = 1, now }},
		{RuleApprovalTimeout, true, false, func(in *Input) { in.RequireApproval, in.ApprovalDeadline = true, now }},
		{RuleApprovalRequired, false, false, func(in *Input) { in.RequireApproval = true }},
		{RuleMaxConcurrent, false, false, func(in *Input) { in.Running = 2 }},
		{RuleFleetMaxConcurrent, false, false, func(in *Input) { in.FleetRunning, in.FleetMaxConcurrent = 1, 1 }},
		{RuleMaxPerHour, false, true, func(in *Input) { in.StartedLastHour = 20 }},
		{RuleFleetMaxPerHour, false, true, func(in *Input) { in.FleetStartedLastHour, in.FleetMaxPerHour = 1, 1 }},
		{RuleShadow, false, false, func(in *Input) { in.Mode = policy.ModeShadow }},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			in := base()
			tt.in(&in)
			d := Decide(in)
			require.Equal(t, tt.rule, d.Rule)
			require.False(t, d.Act)
			require.Equal(t, tt.escalate, d.Escalate)
			require.Equal(t, tt.retry, !d.RetryAt.IsZero())
			if tt.retry {
				require.True(t, d.RetryAt.After(now), "RetryAt %s is after now", d.RetryAt)
			}
		})
	}
}

func TestBackoffWait(t *testing.T) {
	tests := []struct {
		backoff time.Duration
		n       int
		want    time.Duration
	}{
		{30 * time.Second, 1, 30 * time.Second},
		{30 * time.Second, 2, time.Minute},
		{30 * time.Second, 3, 2 * time.Minute},
		{30 * time.Second, 5, 8 * time.Minute},
		{30 * time.Second, 0, 0},
		{0, 3, 0},
		{time.Hour, 100, math.MaxInt64},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, BackoffWait(tt.backoff, tt.n), "backoff %s attempt %d", tt.backoff, tt.n)
	}
	// A saturated wait still makes a valid RetryAt far ahead.
	in := base()
	in.MaxAttempts, in.Attempts, in.Backoff, in.LastAttemptEnd = 200, 100, time.Hour, now
	d := Decide(in)
	require.Equal(t, RuleBackoff, d.Rule)
	require.True(t, d.RetryAt.After(now.Add(100*365*24*time.Hour)))
}

func TestResolveMaxConcurrent(t *testing.T) {
	tests := []struct {
		spec    policy.MaxConcurrent
		matched int
		want    int
	}{
		{"", 20, 0},
		{"3", 20, 3},
		{"3", 0, 3},
		{"10%", 20, 2},
		{"10%", 21, 3},
		{"10%", 5, 1},
		{"50%", 3, 2},
		{"100%", 0, 1},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, ResolveMaxConcurrent(tt.spec, tt.matched), "%q of %d", tt.spec, tt.matched)
	}
}

func TestFromPolicy(t *testing.T) {
	p := &policy.Policy{
		Metadata: policy.Metadata{Name: "web"},
		Spec: policy.Spec{
			Mode: policy.ModeShadow,
			Remediation: &policy.Remediation{
				Action: "process.restart", RequireApproval: true, MaxAttempts: 4,
				Backoff: policy.Duration(20 * time.Second), Cooldown: policy.Duration(5 * time.Minute),
			},
			Limits: &policy.Limits{MaxConcurrent: "25%", MaxPerHour: 7},
		},
	}
	require.Equal(t, Input{
		Policy: "web", Action: "process.restart", Mode: policy.ModeShadow,
		RequireApproval: true, MaxAttempts: 4, Backoff: 20 * time.Second, Cooldown: 5 * time.Minute,
		MaxConcurrent: 3, MaxConcurrentSpec: "25%", Matched: 10, MaxPerHour: 7,
	}, FromPolicy(p, 10))

	watchOnly := &policy.Policy{Metadata: policy.Metadata{Name: "w"}, Spec: policy.Spec{Mode: policy.ModeEnforce}}
	require.Equal(t, Input{Policy: "w", Mode: policy.ModeEnforce, Matched: 3}, FromPolicy(watchOnly, 3))
}
