package engine

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"tend.dev/tend/internal/policy"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func testPolicy(failures, window int, when string) *policy.Policy {
	return &policy.Policy{
		Metadata: policy.Metadata{Name: "web"},
		Version:  7,
		Spec:     policy.Spec{Trigger: policy.Trigger{Failures: failures, Window: window, When: when}},
	}
}

func mustCompile(t testing.TB, failures, window int, when string) *Rule {
	t.Helper()
	r, err := Compile(testPolicy(failures, window, when))
	require.NoError(t, err)
	return r
}

// status letters of the sequence tables: O ok, W warning, C critical,
// U unknown, S unset (read as unknown); R is not a result but a call to
// ResetAfterVerifiedRecovery.
var statusOf = map[byte]agentv1.CheckStatus{
	'O': agentv1.CheckStatus_CHECK_STATUS_OK,
	'W': agentv1.CheckStatus_CHECK_STATUS_WARNING,
	'C': agentv1.CheckStatus_CHECK_STATUS_CRITICAL,
	'U': agentv1.CheckStatus_CHECK_STATUS_UNKNOWN,
	'S': agentv1.CheckStatus_CHECK_STATUS_UNSPECIFIED,
}

// phase letters: H healthy, F failing, T triggered, X flapping.
var phaseOf = map[byte]Phase{'H': PhaseHealthy, 'F': PhaseFailing, 'T': PhaseTriggered, 'X': PhaseFlapping}

// run feeds a sequence into a fresh state and returns, per step, the phase
// letter, a trigger mark ('^' or '.'), and the decisions.
func run(t *testing.T, r *Rule, seq string) (phases, triggers string, ds []Decision) {
	t.Helper()
	var s State
	var ph, tr strings.Builder
	for i := 0; i < len(seq); i++ {
		now := t0.Add(time.Duration(i) * 5 * time.Second)
		if seq[i] == 'R' {
			s.ResetAfterVerifiedRecovery()
			ds = append(ds, Decision{Phase: s.CurrentPhase()})
		} else {
			st, ok := statusOf[seq[i]]
			require.True(t, ok, "bad status letter %q", seq[i])
			ds = append(ds, r.Observe(&s, &agentv1.CheckResult{Seq: uint64(i + 1), Status: st}, nil, now))
		}
		d := ds[len(ds)-1]
		for k, v := range phaseOf {
			if v == d.Phase {
				ph.WriteByte(k)
			}
		}
		if d.Trigger {
			tr.WriteByte('^')
		} else {
			tr.WriteByte('.')
		}
	}
	return ph.String(), tr.String(), ds
}

func TestObserveSequences(t *testing.T) {
	tests := []struct {
		name              string
		failures, window  int
		when              string
		flap              *Flap
		seq               string
		phases, triggers  string
		passed, failed    string // optional: 'p'/'f' per step, '.' otherwise
		lastReasonContain string
	}{
		{
			name: "3 of 5 consecutive", failures: 3, window: 5,
			seq:    "CCC",
			phases: "FFT", triggers: "..^",
			lastReasonContain: "3 of the last 3 results failed (trigger: 3 of 5)",
		},
		{
			name: "3 of 5 not consecutive", failures: 3, window: 5,
			seq:    "COCOC",
			phases: "FFFFT", triggers: "....^",
			passed: ".p.p.", failed: "f.f.f",
			lastReasonContain: "3 of the last 5 results failed (trigger: 3 of 5)",
		},
		{
			name: "3 of 5: failures slide out of the window", failures: 3, window: 5,
			seq:    "CCOOOOOOC",
			phases: "FFFFFFHHF", triggers: ".........",
			lastReasonContain: "1 of the last 5 results failed (trigger: 3 of 5)",
		},
		{
			name: "3 of 5: two old and one new failure do not trigger", failures: 3, window: 5,
			seq:    "CCOOOC",
			phases: "FFFFFF", triggers: "......",
		},
		{
			name: "window 1", failures: 1, window: 1,
			seq:    "OCOC",
			phases: "HTTT", triggers: ".^..",
		},
		{
			name: "failures == window", failures: 5, window: 5,
			seq:    "CCCCOCCCCC",
			phases: "FFFFFFFFFT", triggers: ".........^",
		},
		{
			name: "triggered state stays triggered while results pass, no reset", failures: 2, window: 3,
			seq:    "CCOOOOOO",
			phases: "FTTTTTTT", triggers: ".^......",
			passed:            "..pppppp",
			lastReasonContain: "triggered, waiting for a verified recovery: this result passed; 0 of the last 3 results failed",
		},
		{
			name: "no second trigger while triggered", failures: 1, window: 1,
			seq:    "CCCC",
			phases: "TTTT", triggers: "^...",
			lastReasonContain: "this result did not pass; 1 of the last 1 results failed",
		},
		{
			name: "reset after verified recovery starts over", failures: 2, window: 3,
			seq:    "CCORCOCC",
			phases: "FTTHFFTT", triggers: ".^....^.",
		},
		{
			name: "reset clears old failures from the window", failures: 2, window: 5,
			seq:    "CCRC",
			phases: "FTHF", triggers: ".^..",
		},
		{
			name: "warning and unknown are neither failed nor passed by default", failures: 1, window: 1,
			seq:    "WUSWO",
			phases: "HHHHH", triggers: ".....",
			passed: "....p", failed: ".....",
		},
		{
			name: "warnings between criticals do not count", failures: 2, window: 3,
			seq:    "CWC",
			phases: "FFT", triggers: "..^",
		},
		{
			name: "when widens to warning and unknown", failures: 2, window: 3, when: `result.status != "ok"`,
			seq:    "WUO",
			phases: "FTT", triggers: ".^.",
			passed: "..p", failed: "ff.",
		},
		{
			name: "when narrows: critical without the condition does not count", failures: 1, window: 1, when: `result.status == "warning"`,
			seq:    "CCW",
			phases: "HHT", triggers: "..^",
		},
		{
			name: "when cannot make an ok result fail", failures: 1, window: 1, when: `true`,
			seq:    "OOOC",
			phases: "HHHT", triggers: "...^",
			passed: "ppp.", failed: "...f",
		},
		{
			// Percentages (Nagios weights): result 10 is the 9th change,
			// 51.5% > 50; the criticals that follow fill the window, but
			// nothing triggers until the percent falls to 24.5% < 25 at
			// result 30: then normal evaluation resumes and triggers.
			name: "flapping starts above 50%, suppresses the trigger, stops below 25%", failures: 5, window: 5,
			seq:      "OCOCOCOCOCOCOCOC" + "CCCCCCCCCCCCCCCCC",
			phases:   "HFFFFFFFFXXXXXXX" + "XXXXXXXXXXXXXTTTT",
			triggers: "................" + ".............^...",
		},
		{
			name: "flapping over a triggered state, back to triggered when it stops", failures: 1, window: 1,
			seq:      "COCOCOCOCOCOCOCO" + "OOOOOOOOOOOOOOOOO",
			phases:   "TTTTTTTTTXXXXXXX" + "XXXXXXXXXXXXXTTTT",
			triggers: "^..............." + ".................",
		},
		{
			name: "flap thresholds are fields", failures: 5, window: 5, flap: &Flap{High: 20, Low: 10},
			// the 4th change (result 5) gives 24.2% > 20; it stays above 10.
			seq:    "OCOCOCCCC",
			phases: "HFFFXXXXX", triggers: ".........",
		},
		{
			name: "flap detection off", failures: 5, window: 5, flap: &Flap{},
			seq:    "OCOCOCOCOCOCOCOCOCOCOC",
			phases: "HFFFFFFFFFFFFFFFFFFFFF", triggers: "......................",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustCompile(t, tt.failures, tt.window, tt.when)
			if tt.flap != nil {
				r.Flap = *tt.flap
			}
			phases, triggers, ds := run(t, r, tt.seq)
			require.Equal(t, tt.phases, phases, "phases of %s", tt.seq)
			require.Equal(t, tt.triggers, triggers, "triggers of %s", tt.seq)
			for i, d := range ds {
				if tt.seq[i] == 'R' {
					continue
				}
				if tt.passed != "" {
					require.Equal(t, tt.passed[i] == 'p', d.Passed, "passed at %d", i)
				}
				if tt.failed != "" {
					require.Equal(t, tt.failed[i] == 'f', d.Failed, "failed at %d", i)
				}
				require.Equal(t, d.Phase == PhaseFlapping, d.Flapping, "flapping at %d", i)
				require.NotEmpty(t, d.Reason)
			}
			if tt.lastReasonContain != "" {
				require.Contains(t, ds[len(ds)-1].Reason, tt.lastReasonContain)
			}
		})
	}
}

func TestFlapReasons(t *testing.T) {
	r := mustCompile(t, 5, 5, "")
	_, _, ds := run(t, r, "OCOCOCOCOCOCOCOC"+"CCCCCCCCCCCCCCCCC")
	require.Equal(t, "flapping started: 52% state change over the last 21 results (above 50%); 3 of the last 5 results failed", ds[9].Reason)
	require.Equal(t, "flapping: 57% state change (stops below 25%); 2 of the last 5 results failed", ds[10].Reason)
	require.Equal(t, "flapping: 70% state change (stops below 25%); 5 of the last 5 results failed, not triggering while flapping", ds[20].Reason)
	require.Equal(t, "flapping stopped: 24% state change (below 25%); 5 of the last 5 results failed (trigger: 5 of 5)", ds[29].Reason)
	require.True(t, ds[29].Trigger)
	require.True(t, ds[29].Changed)
	require.InDelta(t, 24.47, ds[29].FlapPercent, 0.01)
}

func TestObserveWhen(t *testing.T) {
	crit, ok, warn := agentv1.CheckStatus_CHECK_STATUS_CRITICAL, agentv1.CheckStatus_CHECK_STATUS_OK, agentv1.CheckStatus_CHECK_STATUS_WARNING
	prod := map[string]string{"env": "prod", "role": "web"}
	bigMetrics := map[string]float64{}
	for i := range 1000 {
		bigMetrics[fmt.Sprintf("m%d", i)] = float64(i)
	}
	tests := []struct {
		name       string
		when       string
		status     agentv1.CheckStatus
		output     string
		metrics    map[string]float64
		labels     map[string]string
		wantFailed bool
		wantEval   string // substring of EvalError, "" for none
	}{
		{name: "metric above", when: `result.metrics.used_percent > 95.0`, status: crit, metrics: map[string]float64{"used_percent": 96}, wantFailed: true},
		{name: "metric below", when: `result.metrics.used_percent > 95.0`, status: crit, metrics: map[string]float64{"used_percent": 91}},
		{name: "metric compared with an int", when: `result.metrics.used_percent > 95`, status: crit, metrics: map[string]float64{"used_percent": 96}, wantFailed: true},
		{name: "metric on a warning counts (when decides for non-ok)", when: `result.metrics.used_percent > 95.0`, status: warn, metrics: map[string]float64{"used_percent": 99}, wantFailed: true},
		{name: "metric on an ok result never counts", when: `result.metrics.used_percent > 95.0`, status: ok, metrics: map[string]float64{"used_percent": 99}},
		{name: "output contains", when: `result.output.contains("timeout")`, status: crit, output: "GET /healthz: timeout after 2s", wantFailed: true},
		{name: "output does not contain", when: `result.output.contains("timeout")`, status: crit, output: "connection refused"},
		{name: "output regex", when: `result.output.matches("^HTTP 5[0-9]{2}")`, status: crit, output: "HTTP 503 Service Unavailable", wantFailed: true},
		{name: "labels match", when: `labels.env == "prod" && result.status == "critical"`, status: crit, labels: prod, wantFailed: true},
		{name: "labels do not match", when: `labels.env == "prod"`, status: crit, labels: map[string]string{"env": "dev"}},
		{name: "label missing is an evaluation error", when: `labels.env == "prod"`, status: crit, wantEval: "no such key: env"},
		{name: "label test with in", when: `"env" in labels && labels.env == "prod"`, status: crit},
		{name: "missing metric is an evaluation error, not failed", when: `result.metrics.cpu > 90.0`, status: crit, metrics: map[string]float64{"mem": 1}, wantEval: "no such key: cpu"},
		{name: "missing metric with has()", when: `has(result.metrics.cpu) && result.metrics.cpu > 90.0`, status: crit},
		{name: "missing metric with an optional default", when: `result.metrics.?cpu.orValue(0.0) > 90.0`, status: crit},
		{name: "status names", when: `result.status == "critical"`, status: crit, wantFailed: true},
		{name: "unset status reads as unknown", when: `result.status == "unknown"`, status: agentv1.CheckStatus_CHECK_STATUS_UNSPECIFIED, wantFailed: true},
		{
			name: "cost limit", when: `result.metrics.all(a, result.metrics.all(b, a != b || true))`,
			status: crit, metrics: bigMetrics, wantEval: "cost limit exceeded",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustCompile(t, 1, 1, tt.when)
			var s State
			d := r.Observe(&s, &agentv1.CheckResult{Seq: 1, Status: tt.status, Output: tt.output, Metrics: tt.metrics}, tt.labels, t0)
			require.Equal(t, tt.wantFailed, d.Failed)
			require.Equal(t, tt.wantFailed, d.Trigger)
			if tt.wantEval == "" {
				require.Empty(t, d.EvalError)
				return
			}
			require.Contains(t, d.EvalError, tt.wantEval)
			require.Contains(t, d.EvalError, fmt.Sprintf("%q", tt.when), "the error names the expression")
			require.Contains(t, d.Reason, "counted as not failed: "+d.EvalError)
			require.False(t, d.Passed)
		})
	}
}

func TestCompile(t *testing.T) {
	tests := []struct {
		name             string
		failures, window int
		when             string
		wantErr          string // substring, "" for success
	}{
		{name: "no when", failures: 3, window: 5},
		{name: "blank when is no when", failures: 3, window: 5, when: "  "},
		{name: "valid when", failures: 3, window: 5, when: `result.metrics.x > 1.0`},
		{name: "syntax error", failures: 3, window: 5, when: `result.status ==`, wantErr: `policy web: spec.trigger.when: invalid expression "result.status ==": 1:17: Syntax error`},
		{name: "unknown field", failures: 3, window: 5, when: `result.stauts == "ok"`, wantErr: `spec.trigger.when: invalid expression "result.stauts == \"ok\"": 1:7: undefined field 'stauts' (result has status, output, metrics)`},
		{name: "unknown variable", failures: 3, window: 5, when: `res.status == "ok"`, wantErr: `1:1: undeclared reference to 'res' (variables: result, labels)`},
		{name: "not a bool", failures: 3, window: 5, when: `result.output`, wantErr: `invalid expression "result.output": must be a bool (true when the result counts as failed), got string`},
		{name: "double == int", failures: 3, window: 5, when: `result.metrics.x == 1`, wantErr: `(metrics are doubles: write 90.0, not 90)`},
		{name: "window 0", failures: 1, window: 0, wantErr: "spec.trigger.window: must be from 1 to 100, got 0"},
		{name: "window too large", failures: 1, window: 101, wantErr: "spec.trigger.window: must be from 1 to 100, got 101"},
		{name: "failures above window", failures: 6, window: 5, wantErr: "spec.trigger.failures: must be from 1 to the window (5), got 6"},
		{name: "failures 0", failures: 0, window: 5, wantErr: "spec.trigger.failures: must be from 1 to the window (5), got 0"},
		{name: "largest window", failures: 100, window: 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Compile(testPolicy(tt.failures, tt.window, tt.when))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.Nil(t, r)
				return
			}
			require.NoError(t, err)
			require.Equal(t, "web", r.Policy)
			require.Equal(t, uint64(7), r.Version)
			require.Equal(t, DefaultFlap, r.Flap)
		})
	}
	_, err := Compile(nil)
	require.Error(t, err)
}

func TestValidateWhen(t *testing.T) {
	tests := []struct {
		expr    string
		wantErr string
	}{
		{"", ""},
		{"   ", ""},
		{`result.status != "ok"`, ""},
		{`result.metrics.used_percent > 95 && labels.env == "prod"`, ""},
		{`result.output.lowerAscii().contains("oom")`, ""},
		{`result.status = "ok"`, `invalid expression "result.status = \"ok\"": 1:15: Syntax error`},
		{`result.metrics.x`, "must be a bool"},
		{strings.Repeat("a", 5000), "invalid expression"},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			err := ValidateWhen(tt.expr)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
			require.NotContains(t, err.Error(), "\n", "one line, for file:line: field: message")
		})
	}
}

func TestObserveSeqOrdering(t *testing.T) {
	crit := agentv1.CheckStatus_CHECK_STATUS_CRITICAL
	tests := []struct {
		name    string
		seqs    []uint64
		ignored []bool
		reason  string // reason of the last decision
	}{
		{name: "increasing", seqs: []uint64{1, 2, 5}, ignored: []bool{false, false, false}},
		{name: "repeated seq", seqs: []uint64{1, 2, 2}, ignored: []bool{false, false, true}, reason: "ignored: result seq 2 is not above the last seen seq 2"},
		{name: "older seq", seqs: []uint64{1, 5, 3}, ignored: []bool{false, false, true}, reason: "ignored: result seq 3 is not above the last seen seq 5"},
		{name: "seq 0 is never valid", seqs: []uint64{0}, ignored: []bool{true}, reason: "ignored: result seq 0 is not above the last seen seq 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustCompile(t, 2, 3, "")
			var s State
			var d Decision
			for i, seq := range tt.seqs {
				before := s
				d = r.Observe(&s, &agentv1.CheckResult{Seq: seq, Status: crit}, nil, t0.Add(time.Duration(i)*time.Second))
				require.Equal(t, tt.ignored[i], d.Ignored, "seq %d", seq)
				if d.Ignored {
					require.Equal(t, before, s, "an ignored result leaves the state alone")
					require.False(t, d.Trigger)
				}
			}
			if tt.reason != "" {
				require.Equal(t, tt.reason, d.Reason)
			}
		})
	}
	t.Run("nil result", func(t *testing.T) {
		var s State
		d := mustCompile(t, 1, 1, "").Observe(&s, nil, nil, t0)
		require.True(t, d.Ignored)
		require.Equal(t, State{}, s)
	})
	t.Run("a reset keeps the last seq", func(t *testing.T) {
		r := mustCompile(t, 1, 1, "")
		var s State
		require.True(t, r.Observe(&s, &agentv1.CheckResult{Seq: 9, Status: crit}, nil, t0).Trigger)
		s.ResetAfterVerifiedRecovery()
		require.True(t, r.Observe(&s, &agentv1.CheckResult{Seq: 9, Status: crit}, nil, t0).Ignored)
		require.True(t, r.Observe(&s, &agentv1.CheckResult{Seq: 10, Status: crit}, nil, t0).Trigger)
	})
}

func TestPhaseSince(t *testing.T) {
	r := mustCompile(t, 2, 3, "")
	var s State
	crit, ok := agentv1.CheckStatus_CHECK_STATUS_CRITICAL, agentv1.CheckStatus_CHECK_STATUS_OK
	steps := []struct {
		status  agentv1.CheckStatus
		changed bool
		since   int // seconds after t0
	}{
		{ok, false, 0}, // healthy is the zero phase: no change
		{crit, true, 1},
		{crit, true, 2},
		{ok, false, 2},
	}
	for i, st := range steps {
		d := r.Observe(&s, &agentv1.CheckResult{Seq: uint64(i + 1), Status: st.status}, nil, t0.Add(time.Duration(i)*time.Second))
		require.Equal(t, st.changed, d.Changed, "step %d", i)
		if st.changed {
			require.Equal(t, t0.Add(time.Duration(st.since)*time.Second), s.Since, "step %d", i)
		}
	}
	s.ResetAfterVerifiedRecovery()
	require.Equal(t, PhaseHealthy, s.Phase)
	require.Equal(t, t0.Add(3*time.Second), s.Since, "a reset dates from the last result")
}

// A state persisted as JSON and rebuilt continues exactly as one kept in
// memory.
func TestStateJSONRoundTrip(t *testing.T) {
	r := mustCompile(t, 3, 70, "") // window spans both words of the bitset
	seq := strings.Repeat("COOCOCCOOOOC", 12)
	var mem, disk State
	for i := 0; i < len(seq); i++ {
		res := &agentv1.CheckResult{Seq: uint64(i + 1), Status: statusOf[seq[i]]}
		now := t0.Add(time.Duration(i) * time.Second)
		want := r.Observe(&mem, res, nil, now)
		b, err := json.Marshal(&disk)
		require.NoError(t, err)
		var back State
		require.NoError(t, json.Unmarshal(b, &back))
		got := r.Observe(&back, res, nil, now)
		require.Equal(t, want, got, "step %d", i)
		disk = back
		if i == 40 {
			mem.ResetAfterVerifiedRecovery()
			disk.ResetAfterVerifiedRecovery()
		}
	}
	require.Equal(t, mem, disk)
	b, err := json.Marshal(&mem)
	require.NoError(t, err)
	require.Less(t, len(b), 300, "small: %s", b)
}

func TestWindowAcrossWords(t *testing.T) {
	tests := []struct {
		window, failures int
		seq              string
		want             int // failures in the window after seq
	}{
		{64, 64, strings.Repeat("C", 64), 64},
		{64, 1, "C" + strings.Repeat("O", 64), 0},
		{65, 1, "C" + strings.Repeat("O", 64), 1},
		{100, 1, "C" + strings.Repeat("O", 99), 1},
		{100, 1, "C" + strings.Repeat("O", 100), 0},
		{100, 100, strings.Repeat("C", 150), 100},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("window %d", tt.window), func(t *testing.T) {
			r := mustCompile(t, tt.failures, tt.window, "")
			r.Flap = Flap{}
			_, _, ds := run(t, r, tt.seq)
			last := ds[len(ds)-1]
			require.Equal(t, tt.want, last.Failures)
			require.Equal(t, min(len(tt.seq), tt.window), last.Results)
		})
	}
}

func TestStatusName(t *testing.T) {
	for st, want := range map[agentv1.CheckStatus]string{
		agentv1.CheckStatus_CHECK_STATUS_OK:          "ok",
		agentv1.CheckStatus_CHECK_STATUS_WARNING:     "warning",
		agentv1.CheckStatus_CHECK_STATUS_CRITICAL:    "critical",
		agentv1.CheckStatus_CHECK_STATUS_UNKNOWN:     "unknown",
		agentv1.CheckStatus_CHECK_STATUS_UNSPECIFIED: "unknown",
		agentv1.CheckStatus(99):                      "unknown",
	} {
		require.Equal(t, want, StatusName(st))
	}
}

// A new policy version may change the window; the state carries over.
func TestWindowChangeKeepsHistory(t *testing.T) {
	crit, ok := agentv1.CheckStatus_CHECK_STATUS_CRITICAL, agentv1.CheckStatus_CHECK_STATUS_OK
	tests := []struct {
		name                 string
		before               string
		fBefore, wBefore     int
		fAfter, wAfter       int
		next                 agentv1.CheckStatus
		wantFailures, wantOf int
		wantTrigger          bool
	}{
		{name: "grow: older results count again", before: "CCCOOOO", fBefore: 4, wBefore: 5, fAfter: 4, wAfter: 10, next: crit, wantFailures: 4, wantOf: 8, wantTrigger: true},
		{name: "shrink: only the newest count", before: "CCCCOO", fBefore: 5, wBefore: 10, fAfter: 2, wAfter: 3, next: crit, wantFailures: 1, wantOf: 3},
		{name: "grow beyond what was seen", before: "CC", fBefore: 3, wBefore: 3, fAfter: 3, wAfter: 50, next: ok, wantFailures: 2, wantOf: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r1 := mustCompile(t, tt.fBefore, tt.wBefore, "")
			var s State
			for i := 0; i < len(tt.before); i++ {
				require.False(t, r1.Observe(&s, &agentv1.CheckResult{Seq: uint64(i + 1), Status: statusOf[tt.before[i]]}, nil, t0).Trigger)
			}
			r2 := mustCompile(t, tt.fAfter, tt.wAfter, "")
			d := r2.Observe(&s, &agentv1.CheckResult{Seq: 100, Status: tt.next}, nil, t0)
			require.Equal(t, tt.wantFailures, d.Failures)
			require.Equal(t, tt.wantOf, d.Results)
			require.Equal(t, tt.wantTrigger, d.Trigger)
		})
	}
}
