package scheduler

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"tend.dev/tend/agent/checks"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// checkFunc is a Checker made of a function.
type checkFunc func(ctx context.Context) checks.Result

func (f checkFunc) Check(ctx context.Context) checks.Result { return f(ctx) }

func ok() checks.Result {
	return checks.Result{Status: agentv1.CheckStatus_CHECK_STATUS_OK, Output: "ok"}
}

// spec is a command spec (the factory under test ignores the type).
func spec(id string, interval, timeout time.Duration) *agentv1.CheckSpec {
	s := &agentv1.CheckSpec{Id: id, Check: &agentv1.CheckSpec_Command{Command: &agentv1.CommandCheck{Argv: []string{"/bin/true"}}}}
	if interval != 0 {
		s.Interval = durationpb.New(interval)
	}
	if timeout != 0 {
		s.Timeout = durationpb.New(timeout)
	}
	return s
}

type record struct {
	id      string
	version uint64
	res     checks.Result
	started time.Time
	took    time.Duration
}

// recorder is a Sink that keeps every result.
type recorder struct {
	mu   sync.Mutex
	recs []record
}

func (r *recorder) sink(spec *agentv1.CheckSpec, res checks.Result, started time.Time, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, record{spec.GetId(), spec.GetPolicyVersion(), res, started, took})
}

func (r *recorder) all(id string) []record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []record
	for _, rec := range r.recs {
		if id == "" || rec.id == id {
			out = append(out, rec)
		}
	}
	return out
}

func (r *recorder) count(id string) int { return len(r.all(id)) }

// newTest returns a Scheduler with a 10ms minimum interval whose checkers
// come from build, stopped at cleanup.
func newTest(t *testing.T, build func(spec *agentv1.CheckSpec) checks.Checker) (*Scheduler, *recorder) {
	t.Helper()
	rec := &recorder{}
	s := New(rec.sink, nil, WithMinInterval(10*time.Millisecond), WithFactory(func(spec *agentv1.CheckSpec) (checks.Checker, error) {
		return build(spec), nil
	}))
	t.Cleanup(s.Stop)
	return s, rec
}

func TestTiming(t *testing.T) {
	tests := []struct {
		name                  string
		interval, timeout     time.Duration
		wantInterval, wantOut time.Duration
		wantErr               string
	}{
		{"defaults", 0, 0, 10 * time.Second, 10 * time.Second, ""},
		{"short interval: timeout is the interval", 3 * time.Second, 0, 3 * time.Second, 3 * time.Second, ""},
		{"long interval: timeout capped at 10s", time.Minute, 0, time.Minute, 10 * time.Second, ""},
		{"explicit timeout", 5 * time.Second, 2 * time.Second, 5 * time.Second, 2 * time.Second, ""},
		{"explicit long timeout kept", time.Minute, 30 * time.Second, time.Minute, 30 * time.Second, ""},
		{"timeout capped at interval", 2 * time.Second, 5 * time.Second, 2 * time.Second, 2 * time.Second, ""},
		{"interval raised to the minimum", 100 * time.Millisecond, 0, time.Second, time.Second, ""},
		{"negative interval", -time.Second, 0, 0, 0, "interval -1s"},
		{"negative timeout", time.Second, -time.Second, 0, 0, "timeout -1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			interval, timeout, err := timing(spec("c", tt.interval, tt.timeout), DefaultMinInterval)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantInterval, interval)
			require.Equal(t, tt.wantOut, timeout)
		})
	}
}

// TestFirstRunJittered: checks started together run first at spread-out
// times within their first interval.
func TestFirstRunJittered(t *testing.T) {
	const n, interval = 20, 400 * time.Millisecond
	s, rec := newTest(t, func(*agentv1.CheckSpec) checks.Checker {
		return checkFunc(func(context.Context) checks.Result { return ok() })
	})
	var specs []*agentv1.CheckSpec
	for i := range n {
		specs = append(specs, spec(fmt.Sprintf("c%d", i), interval, 0))
	}
	start := time.Now()
	require.NoError(t, s.Update(specs))
	require.Eventually(t, func() bool {
		for i := range n {
			if rec.count(fmt.Sprintf("c%d", i)) == 0 {
				return false
			}
		}
		return true
	}, 5*time.Second, 5*time.Millisecond)

	var first, last time.Duration = interval, 0
	for i := range n {
		off := rec.all(fmt.Sprintf("c%d", i))[0].started.Sub(start)
		require.GreaterOrEqual(t, off, time.Duration(0))
		require.Less(t, off, interval+100*time.Millisecond, "first run of c%d must come within its interval", i)
		first, last = min(first, off), max(last, off)
	}
	// 20 uniform draws from [0, 400ms) all within 50ms of each other is
	// about (1/8)^19: it does not happen.
	require.Greater(t, last-first, 50*time.Millisecond, "first runs must be spread out")
}

// TestNoOverlap: a check that runs longer than its interval (even ignoring
// its timeout) skips ticks and never runs twice at once.
func TestNoOverlap(t *testing.T) {
	tests := []struct {
		name string
		run  func(ctx context.Context)
	}{
		{"honours ctx, then lingers", func(ctx context.Context) {
			<-ctx.Done()
			time.Sleep(30 * time.Millisecond)
		}},
		{"ignores ctx", func(ctx context.Context) { time.Sleep(120 * time.Millisecond) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cur, peak, runs atomic.Int32
			s, rec := newTest(t, func(*agentv1.CheckSpec) checks.Checker {
				return checkFunc(func(ctx context.Context) checks.Result {
					n := cur.Add(1)
					defer cur.Add(-1)
					for {
						p := peak.Load()
						if n <= p || peak.CompareAndSwap(p, n) {
							break
						}
					}
					runs.Add(1)
					tt.run(ctx)
					return ok()
				})
			})
			s.hangGrace = 20 * time.Millisecond
			require.NoError(t, s.Update([]*agentv1.CheckSpec{spec("slow", 40*time.Millisecond, 0)}))
			require.Eventually(t, func() bool { return runs.Load() >= 5 }, 10*time.Second, 5*time.Millisecond)
			s.Stop()
			require.Equal(t, int32(1), peak.Load(), "runs of one check must never overlap")
			require.Equal(t, int32(0), cur.Load(), "Stop waits for the run in flight")
			require.NotZero(t, rec.count("slow"))
		})
	}
}

// TestHungCheckReported: a run that ignores its timeout is reported as
// UNKNOWN after the grace period, and the check does not run again until it
// returns.
func TestHungCheckReported(t *testing.T) {
	release := make(chan struct{})
	var runs atomic.Int32
	s, rec := newTest(t, func(*agentv1.CheckSpec) checks.Checker {
		return checkFunc(func(ctx context.Context) checks.Result {
			if runs.Add(1) == 1 {
				<-release
			}
			return ok()
		})
	})
	s.hangGrace = 20 * time.Millisecond
	require.NoError(t, s.Update([]*agentv1.CheckSpec{spec("hung", 30*time.Millisecond, 0)}))
	require.Eventually(t, func() bool { return rec.count("hung") > 0 }, 5*time.Second, 5*time.Millisecond)
	first := rec.all("hung")[0]
	require.Equal(t, agentv1.CheckStatus_CHECK_STATUS_UNKNOWN, first.res.Status)
	require.Contains(t, first.res.Output, "did not return within its timeout of 30ms")
	require.Equal(t, int32(1), runs.Load(), "no new run while the first is hung")

	close(release)
	require.Eventually(t, func() bool {
		recs := rec.all("hung")
		return recs[len(recs)-1].res.Status == agentv1.CheckStatus_CHECK_STATUS_OK
	}, 5*time.Second, 5*time.Millisecond)
}

// TestUpdate adds, keeps, changes and removes checks.
func TestUpdate(t *testing.T) {
	var mu sync.Mutex
	built := map[string]int{}
	s, rec := newTest(t, func(spec *agentv1.CheckSpec) checks.Checker {
		mu.Lock()
		built[spec.GetId()]++
		mu.Unlock()
		return checkFunc(func(context.Context) checks.Result { return ok() })
	})
	builds := func(id string) int {
		mu.Lock()
		defer mu.Unlock()
		return built[id]
	}
	const iv = 20 * time.Millisecond
	ran := func(id string) func() bool { return func() bool { return rec.count(id) > 0 } }

	require.NoError(t, s.Update([]*agentv1.CheckSpec{spec("a", iv, 0), spec("b", iv, 0)}))
	require.Equal(t, []string{"a", "b"}, s.Checks())
	require.Eventually(t, ran("a"), 5*time.Second, 5*time.Millisecond)
	require.Eventually(t, ran("b"), 5*time.Second, 5*time.Millisecond)

	// Same a (a fresh but equal message), b removed, c added.
	require.NoError(t, s.Update([]*agentv1.CheckSpec{spec("a", iv, 0), spec("c", iv, 0)}))
	require.Equal(t, []string{"a", "c"}, s.Checks())
	require.Equal(t, 1, builds("a"), "an unchanged check keeps running as it was")
	require.Eventually(t, ran("c"), 5*time.Second, 5*time.Millisecond)
	bRuns := rec.count("b")
	aRuns := rec.count("a")
	require.Eventually(t, func() bool { return rec.count("a") > aRuns+2 }, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, bRuns, rec.count("b"), "a removed check does not run any more")

	// a changed: rebuilt, and its results carry the new spec.
	changed := spec("a", iv, 0)
	changed.PolicyVersion = 2
	require.NoError(t, s.Update([]*agentv1.CheckSpec{changed, spec("c", iv, 0)}))
	require.Equal(t, 2, builds("a"))
	require.Equal(t, 1, builds("c"))
	require.Eventually(t, func() bool {
		recs := rec.all("a")
		return recs[len(recs)-1].version == 2
	}, 5*time.Second, 5*time.Millisecond)

	// Everything removed.
	require.NoError(t, s.Update(nil))
	require.Empty(t, s.Checks())
}

// TestUpdateSpecsAreCopied: the caller may reuse its specs after Update.
func TestUpdateSpecsAreCopied(t *testing.T) {
	s, rec := newTest(t, func(*agentv1.CheckSpec) checks.Checker {
		return checkFunc(func(context.Context) checks.Result { return ok() })
	})
	sp := spec("a", 20*time.Millisecond, 0)
	require.NoError(t, s.Update([]*agentv1.CheckSpec{sp}))
	sp.Id = "mutated"
	require.Eventually(t, func() bool { return rec.count("a") > 0 }, 5*time.Second, 5*time.Millisecond)
	require.Zero(t, rec.count("mutated"))
}

// TestChangedCheckWaitsForOldRun: the new version of a changed check does
// not start while the old version's run is still going.
func TestChangedCheckWaitsForOldRun(t *testing.T) {
	var oldRunning atomic.Bool
	var overlap atomic.Bool
	var newRuns atomic.Int32
	oldStarted := make(chan struct{})
	s, _ := newTest(t, func(spec *agentv1.CheckSpec) checks.Checker {
		if spec.GetPolicyVersion() == 1 {
			return checkFunc(func(ctx context.Context) checks.Result {
				oldRunning.Store(true)
				defer oldRunning.Store(false)
				select {
				case <-oldStarted:
				default:
					close(oldStarted)
				}
				time.Sleep(200 * time.Millisecond) // ignores its context
				return ok()
			})
		}
		return checkFunc(func(ctx context.Context) checks.Result {
			if oldRunning.Load() {
				overlap.Store(true)
			}
			newRuns.Add(1)
			return ok()
		})
	})
	s.hangGrace = time.Second
	v1 := spec("a", 10*time.Millisecond, 0)
	v1.PolicyVersion = 1
	require.NoError(t, s.Update([]*agentv1.CheckSpec{v1}))
	<-oldStarted
	v2 := spec("a", 10*time.Millisecond, 0)
	v2.PolicyVersion = 2
	require.NoError(t, s.Update([]*agentv1.CheckSpec{v2}))
	require.Eventually(t, func() bool { return newRuns.Load() >= 3 }, 5*time.Second, 5*time.Millisecond)
	require.False(t, overlap.Load(), "old and new versions of a check must not run at once")
}

// TestUpdateInvalidSpecs: bad specs are reported, good ones run anyway
// (with the real checks.New).
func TestUpdateInvalidSpecs(t *testing.T) {
	rec := &recorder{}
	s := New(rec.sink, nil, WithMinInterval(10*time.Millisecond))
	t.Cleanup(s.Stop)

	good := &agentv1.CheckSpec{Id: "good", Interval: durationpb.New(20 * time.Millisecond),
		Check: &agentv1.CheckSpec_Disk{Disk: &agentv1.DiskCheck{Path: "/", MaxUsedPercent: 100}}}
	badDisk := &agentv1.CheckSpec{Id: "bad-disk",
		Check: &agentv1.CheckSpec_Disk{Disk: &agentv1.DiskCheck{Path: "/", MaxUsedPercent: 150}}}
	noType := &agentv1.CheckSpec{Id: "no-type"}
	noID := spec("", time.Second, 0)
	dup := spec("good", time.Second, 0)
	negative := spec("negative", -time.Second, 0)

	err := s.Update([]*agentv1.CheckSpec{good, badDisk, noType, noID, dup, negative, nil})
	require.Error(t, err)
	for _, want := range []string{
		`check "bad-disk": disk check: max_used_percent 150`,
		`check "no-type": unknown check type ""`,
		"check #3 (command) has no id",
		`check "good": duplicate id`,
		`check "negative": interval -1s`,
		"check #6 is nil",
	} {
		require.ErrorContains(t, err, want)
	}
	require.Equal(t, []string{"good"}, s.Checks())
	require.Eventually(t, func() bool { return rec.count("good") > 0 }, 5*time.Second, 5*time.Millisecond)
	r := rec.all("good")[0]
	require.Equal(t, agentv1.CheckStatus_CHECK_STATUS_OK, r.res.Status, r.res.Output)
	require.Contains(t, r.res.Metrics, "used_percent")

	// A running check whose new spec is invalid is stopped.
	bad := proto.Clone(good).(*agentv1.CheckSpec)
	bad.GetDisk().MaxUsedPercent = 0
	require.Error(t, s.Update([]*agentv1.CheckSpec{bad}))
	require.Empty(t, s.Checks())
}

// TestStopWaits: Stop cancels runs in flight and returns only when they
// have ended; afterwards the sink is never called and Update fails.
func TestStopWaits(t *testing.T) {
	var finished atomic.Bool
	started := make(chan struct{}, 1)
	s, rec := newTest(t, func(*agentv1.CheckSpec) checks.Checker {
		return checkFunc(func(ctx context.Context) checks.Result {
			select {
			case started <- struct{}{}:
			default:
			}
			<-ctx.Done()
			time.Sleep(100 * time.Millisecond)
			finished.Store(true)
			return ok()
		})
	})
	require.NoError(t, s.Update([]*agentv1.CheckSpec{spec("a", 200*time.Millisecond, 0)}))
	<-started
	s.Stop()
	require.True(t, finished.Load(), "Stop must wait for the run in flight")
	require.Zero(t, rec.count(""), "the result of a run cut short by Stop is dropped")
	require.ErrorContains(t, s.Update([]*agentv1.CheckSpec{spec("b", time.Second, 0)}), "after Stop")
	s.Stop() // twice is fine
}

// TestPanicBecomesUnknown: a panicking checker yields UNKNOWN and the
// check keeps running.
func TestPanicBecomesUnknown(t *testing.T) {
	s, rec := newTest(t, func(*agentv1.CheckSpec) checks.Checker {
		return checkFunc(func(context.Context) checks.Result { panic("boom") })
	})
	require.NoError(t, s.Update([]*agentv1.CheckSpec{spec("p", 20*time.Millisecond, 0)}))
	require.Eventually(t, func() bool { return rec.count("p") >= 2 }, 5*time.Second, 5*time.Millisecond)
	r := rec.all("p")[0]
	require.Equal(t, agentv1.CheckStatus_CHECK_STATUS_UNKNOWN, r.res.Status)
	require.Equal(t, "check panicked: boom", r.res.Output)
}

// TestResultCleanup: output is truncated and a missing status is UNKNOWN.
func TestResultCleanup(t *testing.T) {
	s, rec := newTest(t, func(*agentv1.CheckSpec) checks.Checker {
		return checkFunc(func(context.Context) checks.Result {
			return checks.Result{Output: strings.Repeat("x", 3*checks.MaxOutput)}
		})
	})
	require.NoError(t, s.Update([]*agentv1.CheckSpec{spec("t", 20*time.Millisecond, 0)}))
	require.Eventually(t, func() bool { return rec.count("t") > 0 }, 5*time.Second, 5*time.Millisecond)
	r := rec.all("t")[0]
	require.Equal(t, agentv1.CheckStatus_CHECK_STATUS_UNKNOWN, r.res.Status)
	require.LessOrEqual(t, len(r.res.Output), checks.MaxOutput)
	require.GreaterOrEqual(t, r.took, time.Duration(0))
}

// TestTimeoutPassedToChecker: the checker's context has the effective
// timeout as its deadline.
func TestTimeoutPassedToChecker(t *testing.T) {
	got := make(chan time.Duration, 1)
	s, _ := newTest(t, func(*agentv1.CheckSpec) checks.Checker {
		return checkFunc(func(ctx context.Context) checks.Result {
			dl, ok := ctx.Deadline()
			if ok {
				select {
				case got <- time.Until(dl):
				default:
				}
			}
			return checks.Result{Status: agentv1.CheckStatus_CHECK_STATUS_OK}
		})
	})
	require.NoError(t, s.Update([]*agentv1.CheckSpec{spec("t", 200*time.Millisecond, 50*time.Millisecond)}))
	select {
	case d := <-got:
		require.LessOrEqual(t, d, 50*time.Millisecond)
		require.Greater(t, d, 0*time.Millisecond)
	case <-time.After(5 * time.Second):
		t.Fatal("the check did not run")
	}
}

func TestAlignDelay(t *testing.T) {
	at := func(unixMilli int64) time.Time { return time.UnixMilli(unixMilli) }
	tests := []struct {
		name            string
		now             time.Time
		phase, interval time.Duration
		want            time.Duration
	}{
		{"on the grid", at(20_000), 0, 10 * time.Second, 0},
		{"just after a tick", at(20_001), 0, 10 * time.Second, 9999 * time.Millisecond},
		{"phase inside the interval", at(20_000), 3 * time.Second, 10 * time.Second, 3 * time.Second},
		{"phase larger than the interval", at(20_000), 93 * time.Second, 10 * time.Second, 3 * time.Second},
		{"now past the phase", at(24_000), 3 * time.Second, 10 * time.Second, 9 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := alignDelay(tt.now, tt.phase, tt.interval)
			require.Equal(t, tt.want, got)
		})
	}
	// Checks of 10 s and 30 s started at different times meet on the
	// 30 s ticks: every 30 s tick is a 10 s tick.
	phase := 7777 * time.Millisecond
	for _, start := range []int64{1_000, 12_345, 29_999} {
		t30 := at(start).Add(alignDelay(at(start), phase, 30*time.Second))
		t10 := at(start + 500).Add(alignDelay(at(start+500), phase, 10*time.Second))
		require.Zero(t, t30.Sub(t10)%(10*time.Second), "start %d", start)
	}
}
